"""Probes: what did a model learn? Each one a question of multimodal pretraining research,
scored against the shapes world's ground truth (or the user's files), with intervals.

``flava-zoo probe NAME --model M`` runs one (``flava-zoo probe list`` names them all);
``run_probe`` is the same from Python. Records go to ``<out>/results.jsonl`` (the schema
of every evaluation: :class:`~flava_zoo.evaluation.results.ResultRecord`, task
``probe/<name>``, each with its 95% interval and a ``chance/<metric>`` record), figures
to ``<out>/figures/<model>/`` as PNG, listed in ``<out>/figures.jsonl``; ``flava-zoo probe
report`` turns one or more such folders into one HTML page.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

__all__ = ["PROBES", "list_probes", "probe_module", "run_probe"]

PROBES: dict[str, str] = {
    "compositional": "seen vs held-out colour-shape combinations: the generalisation gap",
    "memorisation": "nearest training neighbour's similarity against being right",
    "negation": "captions and yes/no questions against their negations: do answers flip?",
    "occlusion": "hide the queried object (must change the answer) or a distractor (must not)",
    "subquestions": "entailed question pairs: is the model consistent?",
    "interactions": "modality ablation and EMAP: how much of the score needs both modalities?",
    "relevance": "attention and gradient relevance of object words over patches; pointing game",
    "embeddings": "k-means NMI / ARI against attributes, alignment, uniformity, modality gap",
    "grounding": "linear probe of attribute words in the text tower: text-only vs multimodal",
    "winoground": "Winoground-style swaps: text, image and group scores",
}
"""Every probe: name -> what it asks (its module is ``flava_zoo.probes.<name>``)."""


def list_probes() -> list[str]:
    """The probe names, in the order of :data:`PROBES`."""
    return list(PROBES)


def probe_module(name: str) -> ModuleType:
    """The module of probe ``name``; a ``ValueError`` naming the probes for an unknown one."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; probes: {', '.join(PROBES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run_probe(name: str, model: str, **options: Any) -> list[Any]:
    """Run probe ``name`` on ``model`` (a registered name, zoo tag, export folder or
    checkpoint) and return the records it wrote. ``options`` are the command line's, with
    underscores: ``tokenizer``, ``classifier``, ``n``, ``seed``, ``world_seed``, ``out``,
    ``results``, ``device``, ``batch_size``, ``label``, ``quiet`` and the probe's own."""
    from .cli import build_parser, run_parsed

    parser = build_parser(name)
    args = parser.parse_args(["--model", str(model)])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"probe {name} has no option {unknown[0]!r}")
    merged = argparse.Namespace(**{**vars(args), "quiet": True, **options})
    return run_parsed(name, merged)
