"""Official downstream metrics: VQA accuracy, the GLUE metrics and score, Hateful Memes
AUROC and accuracy, SNLI-VE accuracy; built on torchmetrics where it has the metric.

The metrics of each task family are declared with the family in :mod:`flava_zoo.tasks`
(the VQA accuracy, a re-implementation of the official ``vqaEval.py`` of GT-Vision-Lab/VQA
at commit a013f00, in :mod:`flava_zoo.tasks.vqa`); they are re-exported here, beside what
aggregates results: the GLUE score and a binary AUROC / accuracy of scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from flava_zoo.tasks.entailment import snli_ve_metrics
from flava_zoo.tasks.glue import GLUE_SCORE_TASKS, glue_metrics, glue_predictions, glue_task_spec
from flava_zoo.tasks.memes import memes_metrics
from flava_zoo.tasks.vqa import (  # the private steps too: tests replay vqaEval.py with them
    VQAAccuracy,
    _process_digit_article,
    _process_punctuation,
    normalize_vqa_answer,
    strip_vqa_answer,
    vqa_accuracy,
    vqa_human_answer_forms,
    vqa_leave_one_out_score,
    vqa_score,
)

__all__ = [
    "GLUE_SCORE_TASKS",
    "VQAAccuracy",
    "_process_digit_article",
    "_process_punctuation",
    "binary_auroc_and_accuracy",
    "glue_metrics",
    "glue_predictions",
    "glue_score",
    "memes_metrics",
    "normalize_vqa_answer",
    "snli_ve_metrics",
    "strip_vqa_answer",
    "vqa_accuracy",
    "vqa_human_answer_forms",
    "vqa_leave_one_out_score",
    "vqa_score",
]

# ----------------------------------------------------------------------------------- GLUE
def glue_score(
    results: Mapping[str, Mapping[str, float]], *, require_all_tasks: bool = True
) -> float:
    """The GLUE score: the mean over tasks of each task's mean official metric.

    ``results[task][metric]``, for the tasks of :data:`GLUE_SCORE_TASKS`. As on the GLUE
    leaderboard, a task with two metrics (MRPC, QQP: accuracy and F1; STS-B: Pearson and
    Spearman) contributes their average, and the diagnostic set is left out. MNLI-m and MNLI-mm
    are two entries (``mnli_matched``, ``mnli_mismatched``), as they are two columns of the
    leaderboard, so ten entries are averaged; other conventions (one MNLI entry, BERT's table
    without WNLI) can be had by passing ``require_all_tasks=False`` with the entries wanted.
    Metrics other than the official ones are ignored. Values are averaged as given: pass them
    in percent, as results records hold them (accuracy and F1 in [0, 100], Matthews
    correlation and Pearson / Spearman times 100, as the GLUE leaderboard shows them), and the
    score is in percent too. A missing task raises a ``ValueError`` naming every one missing.
    """
    unknown = sorted(set(results) - set(GLUE_SCORE_TASKS))
    if unknown:
        raise ValueError(
            f"unknown GLUE score entries {unknown}; expected some of {list(GLUE_SCORE_TASKS)}"
        )
    missing = [t for t in GLUE_SCORE_TASKS if t not in results]
    if require_all_tasks and missing:
        raise ValueError(f"the GLUE score needs every task; missing {missing}")
    if not results:
        raise ValueError("no GLUE results to average")
    task_scores = []
    for task in GLUE_SCORE_TASKS:
        if task not in results:
            continue
        spec = glue_task_spec(task)
        values = []
        for metric in spec.metrics:
            if metric not in results[task]:
                raise ValueError(f"GLUE {task} result lacks its official metric {metric!r}")
            value = float(results[task][metric])
            if not math.isfinite(value):
                raise ValueError(f"GLUE {task} {metric} is {value}")
            values.append(value)
        task_scores.append(sum(values) / len(values))
    return sum(task_scores) / len(task_scores)


# ------------------------------------------------------------------ memes, visual entailment
def binary_auroc_and_accuracy(
    scores: Tensor, labels: Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """AUROC and accuracy of binary ``scores`` (probabilities of class 1, or logits: values
    outside [0, 1] go through a sigmoid, as torchmetrics does) against 0 / 1 ``labels``, as
    fractions in [0, 1] like torchmetrics returns them (results records hold them x100)."""
    scores = torch.as_tensor(scores).float().flatten()
    labels = torch.as_tensor(labels).long().flatten()
    if scores.numel() == 0:
        raise ValueError("no samples: refusing to compute AUROC and accuracy of nothing")
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if set(labels.unique().tolist()) != {0, 1}:
        raise ValueError(
            f"AUROC needs labels of both classes 0 and 1, got {sorted(labels.unique().tolist())}"
        )
    metrics = memes_metrics(threshold)
    metrics.update(scores, labels)
    return {name: float(value) for name, value in metrics.compute().items()}
