"""GLUE and the text classification family: the nine GLUE tasks (files, columns, label
sets, official metrics) and text / text-pair classification, whose official source is GLUE.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from .classification import accuracy_metrics
from .spec import Options, Source, TaskSpec, register

__all__ = [
    "GLUE_SCORE_TASKS",
    "GLUE_TASKS",
    "TEXT_CLASSIFICATION",
    "GlueTaskSpec",
    "glue_metrics",
    "glue_predictions",
    "glue_task_spec",
]


# -------------------------------------------------------------------------------- GLUE
@dataclass(frozen=True)
class GlueTaskSpec:
    """One GLUE task: its official files and columns, label set and metrics.

    ``label_kind``: ``"index"`` (the file holds 0 / 1), ``"name"`` (the file holds label
    names, e.g. MNLI's ``entailment``) or ``"score"`` (STS-B's float similarity, 0 to 5).
    ``headerless_columns``: column names of files without a header (CoLA train / dev).
    """

    name: str
    directory: str
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    files: Mapping[str, str]
    text_column: str
    pair_column: str | None
    label_column: str
    label_kind: Literal["index", "name", "score"]
    headerless_columns: tuple[str, ...] | None = None

    @property
    def num_labels(self) -> int:
        """Head outputs: the number of classes, or 1 for the STS-B regression."""
        return 1 if self.label_kind == "score" else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_kind == "score"


_STANDARD_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "dev_matched": "dev_matched.tsv",
    "dev_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
    "diagnostic": "diagnostic.tsv",
}


GLUE_TASKS: dict[str, GlueTaskSpec] = {
    spec.name: spec
    for spec in (
        GlueTaskSpec(
            "cola", "CoLA", ("unacceptable", "acceptable"), ("matthews_corrcoef",),
            _STANDARD_FILES, "sentence", None, "label", "index",
            headerless_columns=("source", "label", "original_label", "sentence"),
        ),
        GlueTaskSpec(
            "sst2", "SST-2", ("negative", "positive"), ("accuracy",),
            _STANDARD_FILES, "sentence", None, "label", "index",
        ),
        GlueTaskSpec(
            "mrpc", "MRPC", ("not_equivalent", "equivalent"), ("accuracy", "f1"),
            _STANDARD_FILES, "#1 String", "#2 String", "Quality", "index",
        ),
        GlueTaskSpec(
            "qqp", "QQP", ("not_duplicate", "duplicate"), ("accuracy", "f1"),
            _STANDARD_FILES, "question1", "question2", "is_duplicate", "index",
        ),
        GlueTaskSpec(
            "stsb", "STS-B", (), ("pearson", "spearman"),
            _STANDARD_FILES, "sentence1", "sentence2", "score", "score",
        ),
        GlueTaskSpec(
            "mnli", "MNLI", ("entailment", "neutral", "contradiction"), ("accuracy",),
            _MNLI_FILES, "sentence1", "sentence2", "gold_label", "name",
        ),
        GlueTaskSpec(
            "qnli", "QNLI", ("entailment", "not_entailment"), ("accuracy",),
            _STANDARD_FILES, "question", "sentence", "label", "name",
        ),
        GlueTaskSpec(
            "rte", "RTE", ("entailment", "not_entailment"), ("accuracy",),
            _STANDARD_FILES, "sentence1", "sentence2", "label", "name",
        ),
        GlueTaskSpec(
            "wnli", "WNLI", ("not_entailment", "entailment"), ("accuracy",),
            _STANDARD_FILES, "sentence1", "sentence2", "label", "index",
        ),
    )
}  # fmt: skip
"""The nine GLUE tasks by name (``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``,
``qnli``, ``rte``, ``wnli``). MNLI's matched and mismatched sets are its ``dev_matched`` /
``dev_mismatched`` (and ``test_*``) splits."""

GLUE_SCORE_TASKS: tuple[str, ...] = (
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli",
)  # fmt: skip
"""The entries averaged into the GLUE score; MNLI's matched and mismatched sets are two."""


def glue_task_spec(task: str) -> GlueTaskSpec:
    """The spec of GLUE ``task``; ``mnli_matched`` / ``mnli_mismatched`` are MNLI's."""
    name = "mnli" if task in ("mnli_matched", "mnli_mismatched") else task
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {list(GLUE_SCORE_TASKS)}")
    return GLUE_TASKS[name]


def glue_metrics(task: str) -> MetricCollection:
    """The official metrics of GLUE ``task`` as a torchmetrics collection.

    Keys: ``matthews_corrcoef`` (CoLA), ``accuracy`` and ``f1`` (MRPC, QQP; F1 of the positive
    class 1), ``pearson`` and ``spearman`` (STS-B), ``accuracy`` (the others; micro-averaged
    for three-way MNLI). ``update(preds, labels)`` takes predicted class indices, or the STS-B
    scores; :func:`glue_predictions` turns head outputs into those. ``task`` may also be
    ``mnli_matched`` / ``mnli_mismatched``.
    """
    spec = glue_task_spec(task)
    metrics: dict[str, Metric] = {}
    for name in spec.metrics:
        if name == "matthews_corrcoef":
            metrics[name] = BinaryMatthewsCorrCoef()
        elif name == "accuracy":
            metrics[name] = (
                BinaryAccuracy()
                if spec.num_labels == 2
                else MulticlassAccuracy(num_classes=spec.num_labels, average="micro")
            )
        elif name == "f1":
            metrics[name] = BinaryF1Score()
        elif name == "pearson":
            metrics[name] = PearsonCorrCoef()
        elif name == "spearman":
            with warnings.catch_warnings():  # "saves all targets": STS-B has 1.5k pairs
                warnings.filterwarnings(
                    "ignore", message=".*will save all targets", category=UserWarning
                )
                metrics[name] = SpearmanCorrCoef()
        else:  # pragma: no cover - GLUE_TASKS names only the metrics above
            raise ValueError(f"no implementation of GLUE metric {name!r}")
    return MetricCollection(metrics)


def glue_predictions(task: str, outputs: Tensor) -> Tensor:
    """Head outputs ``(N, num_labels)`` to what :func:`glue_metrics` takes: class indices
    (argmax), or the ``(N,)`` scores of the one-output STS-B regression head. A head whose
    width does not match the task's label set is refused."""
    spec = glue_task_spec(task)
    if outputs.ndim != 2 or outputs.shape[1] != spec.num_labels:
        meaning = ", ".join(spec.label_names) if spec.label_names else "a regression score"
        raise ValueError(
            f"GLUE {spec.name} needs head outputs of shape (N, {spec.num_labels}) ({meaning}), "
            f"got {tuple(outputs.shape)}"
        )
    return outputs[:, 0] if spec.is_regression else outputs.argmax(dim=1)


# ------------------------------------------------------------------------ the family
def _glue_labels(options: Options) -> tuple[str, ...]:
    return GLUE_TASKS[options["glue_task"]].label_names


def _glue_name(options: Options) -> str:
    return f"glue/{options['glue_task']}"


def _glue_default_splits(options: Options) -> tuple[str, list[str]]:
    """GLUE's test files carry no labels: validate on the dev set (MNLI ``dev_matched``) and
    test on the dev sets (MNLI both)."""
    if options["glue_task"] == "mnli":
        return "dev_matched", ["dev_matched", "dev_mismatched"]
    return "dev", ["dev"]


def _is_glue(options: Options) -> bool:
    return options.get("source") == "glue"


def text_metrics(num_labels: int, options: Options) -> MetricCollection:
    """GLUE's official metrics of its task (:func:`glue_metrics`), else accuracy."""
    if _is_glue(options):
        return glue_metrics(options["glue_task"])
    return accuracy_metrics(num_labels, {})


def text_metric_inputs(logits: Tensor, label_names: Sequence[str], options: Options) -> Tensor:
    """GLUE: class indices or STS-B scores (:func:`glue_predictions`); else the logits."""
    return glue_predictions(options["glue_task"], logits) if _is_glue(options) else logits


def _is_regression(options: Options) -> bool:
    return _is_glue(options) and GLUE_TASKS[options["glue_task"]].is_regression


TEXT_CLASSIFICATION = register(
    TaskSpec(
        name="text_classification",
        inputs="text",
        shapes=Source(
            "shapes", "flava_zoo.data.shapes:ShapesCaptionEntailment",
            keys={"text": "premise", "text_pair": "hypothesis", "label": "label", "index": "index"},
            transform=False, labels="LABELS",
        ),
        official=(
            Source(
                "glue", "flava_zoo.data.tasks:GlueTask",
                keys={"text": "text", "text_pair": "text_pair", "label": "label", "index": "index"},
                options={"task": "glue_task"}, transform=False, labels=_glue_labels,
                named_splits=True, task_name=_glue_name,
            ),
        ),
        metrics=text_metrics,
        metric_inputs=text_metric_inputs,
        regression=_is_regression,
        modes=("finetune", "linear_probe"),
        default_splits=_glue_default_splits,
    )
)  # fmt: skip
"""Text and text-pair classification (and the STS-B regression): shapes caption entailment,
or the nine GLUE tasks (``glue_task``)."""
