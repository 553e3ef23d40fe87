"""What every probe shares: the loaded model and classifier, the shapes world at the model's
resolution, and the writer of records and figures.

A probe is a module of :mod:`flava_zoo.probes` with ``SUMMARY`` (one line), an optional
``add_arguments(parser)`` for its own options, and ``run(ctx, args) -> list[ResultRecord]``.
It measures on ``ctx.world`` (or on the user file its options name), writes each number
through :meth:`ProbeWriter.write` (one results record per metric, in percent unless its
:class:`Measure` says otherwise, with its 95% interval and, as a record of its own named
``chance/<metric>``, the value a model at chance gets) and each figure through
:meth:`ProbeWriter.figure` (PNG, listed in ``figures.jsonl`` beside the results file).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluation.results import ResultRecord, append_results, make_records
from ..stats import Interval

__all__ = [
    "FIGURES_FILE",
    "RESULTS_FILE",
    "Classifier",
    "Measure",
    "ProbeContext",
    "ProbeError",
    "ProbeWriter",
    "batched",
    "load_classifier",
    "probe_task",
    "pyplot",
    "require",
]

RESULTS_FILE = "results.jsonl"
FIGURES_FILE = "figures.jsonl"


class ProbeError(ValueError):
    """An input or setting a probe cannot work with (exit status 1, no traceback)."""


def require(module: str, extra: str = "probe") -> Any:
    """Import ``module`` (scikit-learn, matplotlib, ...), or a :class:`ProbeError` saying
    which extra installs it: the core install has no probe dependencies."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ProbeError(
            f"this probe needs {module.split('.')[0]}: pip install 'flava-zoo[{extra}]'"
        ) from None


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def probe_task(name: str) -> str:
    """The ``task`` of a probe's records: ``probe/<name>``."""
    return f"probe/{name}"


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Measure:
    """One number a probe reports: its value, its interval, the value at chance (``None``
    when chance is not defined, e.g. for a similarity) and its unit (percent by default)."""

    value: float
    interval: Interval | None = None
    chance: float | None = None
    unit: str = "%"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


@dataclass
class ProbeWriter:
    """Appends a probe's records to ``results`` and saves its figures under ``figures_dir``.

    ``model`` is the records' model name; ``model_source`` where the weights came from;
    ``lineage`` what the records say of the weights' history.
    """

    results: Path
    figures_dir: Path
    model: str
    model_source: str
    lineage: dict[str, Any] = field(default_factory=dict)
    config: Any = None
    written: list[ResultRecord] = field(default_factory=list)

    def write(
        self,
        probe: str,
        split: str,
        measures: Mapping[str, Measure],
        num_samples: int,
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> list[ResultRecord]:
        """One record per measure (and one ``chance/<metric>`` record per measure with a
        chance level), appended to the results file; returns them."""
        records: list[ResultRecord] = []
        by_unit: dict[str, dict[str, Measure]] = {}
        for name, m in measures.items():
            by_unit.setdefault(m.unit, {})[name] = m
            if m.chance is not None:
                by_unit.setdefault(m.unit, {})[f"chance/{name}"] = Measure(m.chance, unit=m.unit)
        for unit, group in by_unit.items():
            records += make_records(
                {name: m.value for name, m in group.items()},
                model=self.model,
                model_source=self.model_source,
                task=probe_task(probe),
                split=split,
                num_samples=int(num_samples),
                config=self.config,
                unit=unit,
                hyperparameters=hyperparameters,
                lineage=self.lineage,
                intervals={name: m.interval for name, m in group.items() if m.interval is not None},
            )
        append_results(self.results, records)
        self.written += records
        return records

    def figure(self, probe: str, name: str, fig: Any, caption: str) -> Path:
        """Save the matplotlib figure ``fig`` as ``<figures_dir>/<model>/<probe>_<name>.png``,
        close it, and list it in ``figures.jsonl`` beside the results file."""
        plt = pyplot()
        folder = self.figures_dir / _slug(self.model)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{probe}_{_slug(name)}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        entry = {
            "model": self.model,
            "probe": probe,
            "figure": name,
            "path": os.path.relpath(path, self.results.parent),
            "caption": caption,
        }
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results.parent / FIGURES_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        return path


@dataclass
class Classifier:
    """A two-input (or one-input) classifier a probe can query: ``logits(images, texts)``.

    ``forward`` takes a batch dict (``pixel_values``, ``input_ids``, ``attention_mask``,
    ``token_type_ids``) and returns ``(B, len(label_names))`` logits; ``task`` names the task
    it was trained on (``shapes/vqa``, ``shapes/memes``, ``vqav2/...``); ``inputs`` what it reads
    (``image``, ``text`` or ``multimodal``). :func:`load_classifier` builds one from a
    fine-tuning checkpoint; tests build them from modules they train.
    """

    forward: Callable[[dict[str, Tensor]], Tensor]
    tokenizer: Any
    transform: Callable[[Any], Tensor]
    label_names: list[str]
    task: str | None = None
    inputs: str = "multimodal"
    name: str = "classifier"
    device: torch.device = torch.device("cpu")
    max_length: int = 40

    def batch(self, images: Sequence[Any] | None, texts: Sequence[str] | None) -> dict[str, Tensor]:
        """The batch dict of PIL ``images`` and ``texts`` (either may be ``None``)."""
        out: dict[str, Tensor] = {}
        if images is not None:
            out["pixel_values"] = torch.stack([self.transform(im) for im in images]).to(self.device)
        if texts is not None:
            enc = self.tokenizer(list(texts), max_length=self.max_length)
            out.update({k: v.to(self.device) for k, v in enc.items()})
        return out

    @torch.no_grad()
    def logits(self, images: Sequence[Any] | None, texts: Sequence[str] | None) -> Tensor:
        """``(N, classes)`` logits, float32 on the CPU."""
        return self.forward(self.batch(images, texts)).float().cpu()

    def predict(self, images: Sequence[Any] | None, texts: Sequence[str] | None) -> list[str]:
        """The predicted label names."""
        return [self.label_names[i] for i in self.logits(images, texts).argmax(-1).tolist()]


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of a fine-tuning checkpoint (``flava-zoo fit`` with a
    :class:`~flava_zoo.downstream.FinetuneModule` recipe): backbone and head as trained,
    with the checkpoint's own tokenizer, transform and label set."""
    from ..checkpoint import CHECKPOINT_KEY, read_training_checkpoint
    from ..downstream.modules import FinetuneModule
    from ..factory import get_transform, load_tokenizer, resolve_model

    path = Path(path)
    try:
        ckpt = read_training_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise ProbeError(f"--classifier {path}: {e}") from None
    info = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or not str(info.get("module", "")).endswith("FinetuneModule"):
        raise ProbeError(
            f"--classifier {path} is not a fine-tuning checkpoint (flava-zoo fit with a "
            "FinetuneModule recipe writes one)"
        )
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    args = FinetuneModule.init_args_from_checkpoint(str(path), hparams)
    module = FinetuneModule(**args)
    inputs, labels = hparams.get("inputs"), hparams.get("label_names") or info.get("label_names")
    if inputs is None or not labels:
        raise ProbeError(f"--classifier {path} holds no head description (inputs, label_names)")
    module._build_head(inputs, len(labels))
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith("model.")] or [k for k in missing if "head" in k]
    if missing:
        raise ProbeError(f"--classifier {path}: the checkpoint has no {missing[0]}")
    dev = torch.device(device)
    module = module.eval().to(dev)
    source = resolve_model(path)
    tokenizer = load_tokenizer(source)
    return Classifier(
        forward=module.forward,
        tokenizer=tokenizer,
        transform=get_transform(source),
        label_names=list(labels),
        task=info.get("task"),
        inputs=inputs,
        name=str(path),
        device=dev,
    )


@dataclass
class ProbeContext:
    """Everything a probe's ``run`` reads.

    ``model``: an :class:`~flava_zoo.inference.InferenceModel` (backbone in eval mode, its
    tokenizer and transform); ``classifier``: the fine-tuned classifier given with
    ``--classifier``, or ``None``; ``world``: the shapes world at the model's image size
    (seed ``world_seed``); ``n``: test items (the probe's default when ``None``); ``seed``:
    drives every random choice of the probe (and the bootstrap); ``writer``: see
    :class:`ProbeWriter`.
    """

    model: Any
    world: Any
    writer: ProbeWriter
    classifier: Classifier | None = None
    n: int | None = None
    seed: int = 0
    batch_size: int = 64
    quiet: bool = False
    _itm: Any = None

    def items(self, default: int) -> int:
        """The number of test items: ``--n`` when given, else the probe's ``default``."""
        n = default if self.n is None else int(self.n)
        if n < 1:
            raise ProbeError(f"--n must be at least 1, got {n}")
        return n

    def need_classifier(self, probe: str, tasks: Sequence[str] | None = None) -> Classifier:
        """``--classifier``'s classifier; a clear error when none was given or it was trained
        on another task than ``tasks``."""
        if self.classifier is None:
            raise ProbeError(
                f"probe {probe} needs a fine-tuned classifier: give --classifier CKPT (a checkpoint "
                f"of flava-zoo fit on {' or '.join(tasks) if tasks else 'a classification task'})"
            )
        if tasks and self.classifier.task is not None and self.classifier.task not in tasks:
            raise ProbeError(
                f"probe {probe} needs a classifier trained on {' or '.join(tasks)}; "
                f"{self.classifier.name} was trained on {self.classifier.task}"
            )
        return self.classifier

    def itm_head(self) -> Any:
        """The model's image-text matching head (export, zoo entry or checkpoint), or ``None``."""
        if self._itm is None:
            from ..inference import _itm_head

            self._itm = _itm_head(self.model, None) or False
        return self._itm or None

    def progress(self, total: int, desc: str) -> Any:
        """A progress bar over ``total`` steps on stderr (silent with ``quiet``)."""
        from ..inference import _progress

        return _progress(total, desc, self.quiet)

    @torch.no_grad()
    def embed(self, images: Sequence[Any] | None = None, texts: Sequence[str] | None = None) -> Tensor:
        """Normalised contrastive embeddings of PIL ``images`` or of ``texts``, in batches."""
        if (images is None) == (texts is None):
            raise ValueError("give images or texts")
        items = images if images is not None else texts
        fn = self.model.embed_images if images is not None else self.model.embed_texts
        return torch.cat([fn(chunk) for chunk in batched(list(items), self.batch_size)])

    @torch.no_grad()
    def itm_probability(self, images: Sequence[Any], texts: Sequence[str]) -> Tensor:
        """The ITM head's match probability of each (image, text) pair, ``(N,)``."""
        head = self.itm_head()
        if head is None:
            raise ProbeError(f"{self.model.name} has no image-text matching head")
        out = []
        for lo in range(0, len(images), self.batch_size):
            ims, txs = images[lo : lo + self.batch_size], texts[lo : lo + self.batch_size]
            image = self.model.encode_images(ims)
            text = self.model.encode_texts(txs)
            fused = self.model.model.fuse(image, text)
            out.append(head(fused.cls).float().softmax(-1)[:, 1].cpu())
        return torch.cat(out)
