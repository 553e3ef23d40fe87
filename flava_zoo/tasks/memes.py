"""Memes: an image and its text -> hateful or not (Hateful Memes), scored by AUROC and
accuracy of the probability of class 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from .spec import Options, Source, TaskSpec, register

__all__ = ["HATEFUL_MEMES_LABELS", "MEMES", "SHAPES_MEMES_LABELS", "memes_metrics"]

HATEFUL_MEMES_LABELS: tuple[str, ...] = ("not_hateful", "hateful")
"""Hateful Memes classes: label 1 is hateful."""
SHAPES_MEMES_LABELS: tuple[str, ...] = ("false", "true")
"""The shapes memes classes: label 1 means the text is true of the image."""


def memes_metrics(threshold: float = 0.5) -> MetricCollection:
    """Hateful Memes metrics: ``auroc`` and ``accuracy`` of the probability (or logit) of
    class 1, hateful. Accuracy thresholds probabilities at ``threshold``."""
    return MetricCollection(
        {"auroc": BinaryAUROC(), "accuracy": BinaryAccuracy(threshold=threshold)}
    )


def _family_metrics(num_labels: int, options: Options) -> MetricCollection:
    return memes_metrics()


def positive_probability(logits: Tensor, label_names: Sequence[str], options: Options) -> Tensor:
    """The probability of class 1 from two-class head outputs ``(B, 2)``."""
    return logits.softmax(-1)[:, 1]


def _jsonl_stem(spec: Mapping[str, str]) -> str | None:
    """A Hateful Memes split named by its file: ``dev_seen`` from ``dev_seen.jsonl``."""
    return PurePath(str(spec["jsonl"])).stem or None if spec.get("jsonl") else None


_KEYS = {"image": "image", "text": "text", "label": "label", "index": "index"}

MEMES = register(
    TaskSpec(
        name="memes",
        inputs="multimodal",
        shapes=Source("shapes", "flava_zoo.data.shapes:ShapesMemes", keys=_KEYS, labels=SHAPES_MEMES_LABELS),
        official=(
            Source("hateful_memes", "flava_zoo.data.tasks:HatefulMemes", keys=_KEYS,
                   labels=HATEFUL_MEMES_LABELS, test_split_name=_jsonl_stem),
        ),
        metrics=_family_metrics,
        metric_inputs=positive_probability,
        positive_proba=True,
        modes=("finetune", "linear_probe"),
    )
)  # fmt: skip
"""Shapes memes (is the text true of the image?), or Hateful Memes."""
