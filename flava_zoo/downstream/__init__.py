"""Downstream evaluation: fine-tuning with task heads, linear probes, zero-shot classification
and retrieval, on the shapes world or the official task files.

Every evaluation appends one results record per (model, task, split, metric) to a JSON-lines
file (:mod:`flava_zoo.evaluation.results`).
"""

from .base import DownstreamModule, layer_decay_multipliers, load_itm_head
from .data import FAMILIES, OFFICIAL_SOURCES, TaskCollator, TaskData
from .linear_probe import LinearProbe, fit_logistic_regression, run_probe, sweep_l2
from .modules import FinetuneModule
from .retrieval import RetrievalModule
from .zero_shot import ZeroShotClassifier, class_embeddings, zero_shot_logits

__all__ = [
    "FAMILIES",
    "OFFICIAL_SOURCES",
    "DownstreamModule",
    "FinetuneModule",
    "LinearProbe",
    "RetrievalModule",
    "TaskCollator",
    "TaskData",
    "ZeroShotClassifier",
    "class_embeddings",
    "fit_logistic_regression",
    "layer_decay_multipliers",
    "load_itm_head",
    "run_probe",
    "sweep_l2",
    "zero_shot_logits",
]
