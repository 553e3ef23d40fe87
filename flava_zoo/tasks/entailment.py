"""Visual entailment: an image premise and a text hypothesis -> entailment, neutral or
contradiction (SNLI-VE), scored by accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .classification import accuracy_metrics
from .spec import Source, TaskSpec, register

__all__ = ["SNLI_VE_LABELS", "VISUAL_ENTAILMENT", "snli_ve_metrics"]

SNLI_VE_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
"""SNLI-VE classes, in the order of :attr:`ShapesEntailment.LABELS` (and GLUE MNLI)."""


def snli_ve_metrics() -> MetricCollection:
    """SNLI-VE three-way (:data:`SNLI_VE_LABELS`) ``accuracy``; ``update`` takes class
    indices or ``(N, 3)`` logits."""
    return MetricCollection(
        {"accuracy": MulticlassAccuracy(num_classes=len(SNLI_VE_LABELS), average="micro")}
    )


def _jsonl_stem(spec: Mapping[str, str]) -> str | None:
    """An SNLI-VE split named by its file: ``test`` from ``snli_ve_test.jsonl``."""
    if not spec.get("jsonl"):
        return None
    return PurePath(str(spec["jsonl"])).stem.removeprefix("snli_ve_") or None


_KEYS = {"image": "image", "text": "hypothesis", "label": "label", "index": "index"}

VISUAL_ENTAILMENT = register(
    TaskSpec(
        name="visual_entailment",
        inputs="multimodal",
        shapes=Source("shapes", "flava_zoo.data.shapes:ShapesEntailment", keys=_KEYS, labels="LABELS"),
        official=(
            Source("snli_ve", "flava_zoo.data.tasks:SnliVE", keys=_KEYS, labels=SNLI_VE_LABELS,
                   test_split_name=_jsonl_stem),
        ),
        metrics=accuracy_metrics,
        modes=("finetune", "linear_probe"),
    )
)  # fmt: skip
"""Shapes entailment, or SNLI-VE (Flickr30K premises)."""
