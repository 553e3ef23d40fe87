"""Image classification, and zero-shot classification as its evaluation mode: an image ->
one of a label set, scored by top-1 (and optionally mean per-class) accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .spec import Options, Source, TaskSpec, register

__all__ = ["IMAGE_CLASSIFICATION", "accuracy_metrics"]


def accuracy_metrics(num_labels: int, options: Options) -> MetricCollection:
    """Top-1 ``accuracy`` (micro), and ``mean_per_class_accuracy`` (macro) when the options
    ask for it (``mean_per_class``)."""
    metrics = {"accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro")}
    if options.get("mean_per_class"):
        metrics["mean_per_class_accuracy"] = MulticlassAccuracy(num_classes=num_labels, average="macro")
    return MetricCollection(metrics)


def _shapes_name(options: Options) -> str:
    return "shapes/image_classification" + ("_colour" if options.get("target") == "colour" else "")


def _cifar_split(split: str) -> dict[str, Any]:
    """CIFAR's training file feeds the training split and a validation split held out of it."""
    return {"train": split in ("train", "val")}


def _cifar_test_name(spec: Mapping[str, Any]) -> str:
    return "train" if spec.get("train") else "test"


def _folder_name(spec: Mapping[str, Any]) -> str | None:
    return PurePath(str(spec["root"])).name or None if spec.get("root") else None


_IMAGE_KEYS = {"image": "image", "label": "label", "index": "index"}

IMAGE_CLASSIFICATION = register(
    TaskSpec(
        name="image_classification",
        inputs="image",
        shapes=Source(
            "shapes", "flava_zoo.data.shapes:ShapesClassification", keys=_IMAGE_KEYS,
            options={"target": "target"}, labels="class_names", mean_per_class=True,
            task_name=_shapes_name, prompts="prompts",
        ),
        official=tuple(
            Source(name, "flava_zoo.data.tasks:Cifar", keys=_IMAGE_KEYS, defaults={"variant": name},
                   split_arg=_cifar_split, test_split_name=_cifar_test_name)
            for name in ("cifar10", "cifar100")
        ) + (
            Source("image_folder", "flava_zoo.data.tasks:image_folder", keys=_IMAGE_KEYS,
                   mean_per_class=True, test_split_name=_folder_name),
        ),
        metrics=accuracy_metrics,
        modes=("finetune", "linear_probe", "zero_shot"),
    )
)  # fmt: skip
"""Shapes (shape or colour), CIFAR-10 / -100 or an image folder; zero-shot classification
puts each class name into the task's prompts (the shapes world's own, else
:attr:`TaskSpec.prompt`)."""
