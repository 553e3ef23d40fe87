"""The task layer: one spec per task family (inputs, labels, reader, metrics, loss, head).

It sits below :mod:`flava_zoo.data` and :mod:`flava_zoo.evaluation` and imports neither:
readers are named by reference, the metrics are torchmetrics objects, and the pure code they
need (the official VQA answer normalisation and accuracy, the GLUE table) lives here.

==================== ============ ================================ ==========================
family               inputs       labels                           official sources
==================== ============ ================================ ==========================
image_classification image        classes (and zero-shot prompts)  cifar10, cifar100, image_folder
text_classification  text (pair)  classes, STS-B a score           glue
vqa                  multimodal   soft scores over answers         vqav2
visual_entailment    multimodal   entailment, neutral, contra.     snli_ve
memes                multimodal   not hateful / hateful            hateful_memes
retrieval            multimodal   none (recall at K)               karpathy
==================== ============ ================================ ==========================
"""

from .classification import IMAGE_CLASSIFICATION, accuracy_metrics
from .entailment import SNLI_VE_LABELS, VISUAL_ENTAILMENT, snli_ve_metrics
from .glue import (
    GLUE_SCORE_TASKS,
    GLUE_TASKS,
    TEXT_CLASSIFICATION,
    GlueTaskSpec,
    glue_metrics,
    glue_predictions,
)
from .memes import MEMES, memes_metrics
from .retrieval import RETRIEVAL
from .spec import INPUTS, MODES, TASKS, Source, TaskSpec, get_task, register, resolve
from .vqa import VQA, VQAAccuracy, normalize_vqa_answer, vqa_score

__all__ = [
    "GLUE_SCORE_TASKS",
    "GLUE_TASKS",
    "IMAGE_CLASSIFICATION",
    "INPUTS",
    "MEMES",
    "MODES",
    "RETRIEVAL",
    "SNLI_VE_LABELS",
    "TASKS",
    "TEXT_CLASSIFICATION",
    "VISUAL_ENTAILMENT",
    "VQA",
    "GlueTaskSpec",
    "Source",
    "TaskSpec",
    "VQAAccuracy",
    "accuracy_metrics",
    "get_task",
    "glue_metrics",
    "glue_predictions",
    "memes_metrics",
    "normalize_vqa_answer",
    "register",
    "resolve",
    "snli_ve_metrics",
    "vqa_score",
]
