"""What a task family is: :class:`TaskSpec` (inputs, labels, head, loss, metrics, evaluation
modes) and :class:`Source` (one distribution that feeds it), and the registry of families.

This layer sits below :mod:`flava_zoo.data` and :mod:`flava_zoo.evaluation`: it imports
neither. A source names its reader by reference (``"flava_zoo.data.tasks:SnliVE"``), and
:func:`resolve` imports it when data is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torchmetrics import MetricCollection

__all__ = ["INPUTS", "MODES", "TASKS", "Source", "TaskSpec", "get_task", "register", "resolve"]

INPUTS = ("image", "text", "multimodal")
"""What a family's model reads: the image tower, the text tower (a text or a text pair), or
the fusion encoder over both."""
MODES = ("finetune", "linear_probe", "zero_shot", "retrieval")
"""Evaluation modes: a trained head, a probe on frozen features, zero-shot prompts, ranking."""

Options = Mapping[str, Any]
"""A task's options as the data module holds them: ``source``, ``glue_task``, ``target``,
``mean_per_class``, ..."""


@dataclass(frozen=True)
class Source:
    """One distribution that feeds a task family: the shapes world's counterpart, or an
    official dataset.

    Args:
        name: the source's name in recipes (``shapes``, ``cifar10``, ``snli_ve``).
        reader: ``"module:attribute"`` of the dataset class (or function) whose keyword
            arguments describe one split (a recipe's ``train: {...}``).
        keys: common sample key (``image``, ``text``, ``text_pair``, ``label``, ``target``,
            ``answers``, ``index``) -> the key the reader's samples use.
        defaults: keyword arguments the reader gets unless the split gives them.
        train_defaults: the same, for the training split only (over ``defaults``).
        options: reader keyword -> the data module option it takes (``{"task": "glue_task"}``).
        transform: whether the reader takes the image transform.
        split_arg: the reader's keyword arguments that a split name implies (CIFAR's
            ``train``, Karpathy's ``split``).
        labels: the label set: fixed names, a function of the options, the name of an
            attribute (or method) of the training dataset, or ``None`` for the dataset's
            ``label_names``.
        test_split_name: names an official test split from its keyword arguments (its
            files), ``None`` if it cannot.
        mean_per_class: whether mean per-class accuracy is reported by default.
        train_view: a method of the training dataset whose result is trained on
            (Karpathy's ``pairs``: every caption).
        derive: adds keys a reader does not have to a common-key sample (shapes VQA: the
            soft target and human answers of its one answer); called as
            ``derive(sample, out, num_labels)``.
        named_splits: the reader's ``split`` argument names a file of one folder (GLUE):
            splits default to the task's own (:attr:`TaskSpec.default_splits`).
        answer_vocab: the reader takes ``answer_vocab`` (VQAv2: the training answers).
        task_name: the task's name in results records from the options; default
            ``shapes/<family>`` for the shapes world, else the source's name.
        prompts: a method of the training dataset giving zero-shot prompts for a class name.
    """

    name: str
    reader: str
    keys: Mapping[str, str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    transform: bool = True
    split_arg: Callable[[str], dict[str, Any]] | None = None
    labels: Sequence[str] | Callable[[Options], Sequence[str]] | str | None = None
    test_split_name: Callable[[Mapping[str, Any]], str | None] | None = None
    mean_per_class: bool = False
    train_view: str | None = None
    derive: Callable[[Mapping[str, Any], dict[str, Any], int], None] | None = None
    named_splits: bool = False
    answer_vocab: bool = False
    task_name: Callable[[Options], str] | None = None
    prompts: str | None = None


def _no(options: Options) -> bool:
    return False


def _logits(logits: Tensor, label_names: Sequence[str], options: Options) -> Tensor:
    return logits


@dataclass(frozen=True)
class TaskSpec:
    """One task family: what its model reads, what its labels are, where its samples come
    from, and how it is trained and scored.

    Args:
        name: the family (``vqa``); a recipe's ``data.init_args.task``.
        inputs: ``image``, ``text`` (a text or a text pair) or ``multimodal``.
        shapes: the shapes world's counterpart.
        official: the official sources, the first of which ``source: official`` picks when
            it is the only one.
        targets: ``classes`` (hard labels), ``soft`` (soft scores over an answer
            vocabulary, VQA) or ``None`` (no labels: retrieval).
        head: ``classifier`` (a head of shape ``(B, num_labels)`` on the features of
            ``inputs``) or ``None`` (the embeddings are scored directly).
        loss: default fine-tuning loss (``cross_entropy``, ``bce``); a regression uses ``mse``.
        metrics: the official metrics, ``metrics(num_labels, options)``, a torchmetrics
            collection whose ``update`` takes ``metric_inputs(...)`` and ``metric_target``.
        metric_inputs: head outputs -> what the metrics take (class logits by default; VQA:
            answer strings; memes: the probability of class 1; GLUE: predictions).
        metric_target: the batch key the metrics compare with (``labels``, VQA ``answers``).
        regression: whether the options make a one-output regression (GLUE STS-B).
        prediction: ``softmax`` (per-label probabilities) or ``sigmoid_top`` (the top
            answers' sigmoid scores, VQA) in prediction files.
        positive_proba: prediction rows carry the probability of label 1 as ``proba``.
        modes: the evaluation modes the family supports (:data:`MODES`).
        default_splits: for a source with ``named_splits``: the options -> the file
            names of its ``val`` split and of its test splits.
        prompt: the zero-shot prompt template, ``{}`` marking the class name.
    """

    name: str
    inputs: str
    shapes: Source
    official: tuple[Source, ...]
    targets: str | None = "classes"
    head: str | None = "classifier"
    loss: str | None = "cross_entropy"
    metrics: Callable[[int, Options], MetricCollection] | None = None
    metric_inputs: Callable[[Tensor, Sequence[str], Options], Any] = _logits
    metric_target: str = "labels"
    regression: Callable[[Options], bool] = _no
    prediction: str = "softmax"
    positive_proba: bool = False
    modes: tuple[str, ...] = ("finetune",)
    default_splits: Callable[[Options], tuple[str, list[str]]] | None = None
    prompt: str = "a photo of a {}."

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"task {self.name}: inputs must be one of {INPUTS}, got {self.inputs!r}")
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"task {self.name}: unknown evaluation mode(s) {unknown}; choose from {MODES}")

    @property
    def sources(self) -> tuple[str, ...]:
        """The names of the official sources."""
        return tuple(s.name for s in self.official)

    def source(self, name: str) -> Source:
        """The source called ``name`` (``shapes`` or an official one)."""
        if name == "shapes":
            return self.shapes
        for source in self.official:
            if source.name == name:
                return source
        raise ValueError(f"source {name!r} does not feed {self.name}; choose 'shapes' or one of {list(self.sources)}")


TASKS: dict[str, TaskSpec] = {}
"""Every registered task family by name."""


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (a family is registered once) and return it."""
    if spec.name in TASKS:
        raise ValueError(f"task family {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered family ``name``; an unknown name is refused with the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task family {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names (a source's reader)."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"reader reference {reference!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)
