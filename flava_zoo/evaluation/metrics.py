"""Official downstream metrics: VQA accuracy, the GLUE metrics and score, Hateful Memes
AUROC and accuracy, SNLI-VE accuracy; built on torchmetrics where it has the metric.

The VQA accuracy is a re-implementation of the current official evaluator,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of github.com/GT-Vision-Lab/VQA at commit
a013f00 ("Fixed processing answers bug", 2021), quirks included, so that numbers compare
with published ones.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from flava_zoo.data.tasks import GLUE_TASKS, SNLI_VE_LABELS, GlueTaskSpec

__all__ = [
    "GLUE_SCORE_TASKS",
    "VQAAccuracy",
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

# ------------------------------------------------------------------- VQA normalisation
# The tables and expressions of the official vqaEval.py.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = ("a", "an", "the")
# "(?!<=\d)" is a lookahead, not the lookbehind it looks like: a period is dropped unless a
# digit follows it ("3.5" keeps its point, "yes." and "u.s." lose theirs).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# vqaEval.py calls periodStrip.sub("", text, re.UNICODE): the flag lands in `count`.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    """``processPunctuation``: a mark next to a space, or any mark in a text with a
    digit-comma-digit ("1,000"), is deleted; elsewhere it becomes a space. Then periods not
    followed by a digit are deleted."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """``processDigitArticle``: lower-case, number words zero to ten (and "none") to digits,
    articles dropped, apostrophe-less contractions restored ("dont" -> "don't")."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def strip_vqa_answer(answer: str) -> str:
    """The first step ``vqaEval.py`` (a013f00) applies to every answer, predicted and human:
    newlines and tabs become spaces, then surrounding whitespace is stripped. No
    lower-casing: ``"Two "`` becomes ``"Two"``."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA normalisation of an answer.

    :func:`strip_vqa_answer`, then punctuation (``processPunctuation``) and lower-casing,
    digits, articles and contractions (``processDigitArticle``), exactly as ``vqaEval.py``
    (GT-Vision-Lab/VQA, a013f00) does: ``"Two" -> "2"``, ``"yes." -> "yes"``,
    ``"the dog" -> "dog"``, ``"1,000" -> "1000"``, ``"dont" -> "don't"``; ``"it's"`` and
    ``"its"`` stay different (the apostrophe is not in the punctuation list and ``its`` is not
    in the contractions table). The evaluator applies it to the prediction and to the human
    answers of a question only when those humans disagree (see :func:`vqa_score`); the
    answer vocabulary and soft targets of :class:`~flava_zoo.data.tasks.VQAv2` use it too.
    """
    return _process_digit_article(_process_punctuation(strip_vqa_answer(answer)))


def vqa_human_answer_forms(human_answers: Sequence[str]) -> tuple[list[str], bool]:
    """The human answers of one question as ``vqaEval.py`` (a013f00) compares them, and
    whether it normalised them.

    Every answer is stripped (:func:`strip_vqa_answer`); if the stripped answers are not all
    identical, every one is then normalised (:func:`normalize_vqa_answer`) and ``True`` is
    returned: the prediction must then be normalised too. If they are all identical, nothing
    more is done to them, nor to the prediction, which is only stripped (``False``).
    """
    if isinstance(human_answers, str) or not human_answers:
        raise ValueError("the VQA score needs a non-empty list of human answers")
    stripped = [strip_vqa_answer(h) for h in human_answers]
    if len(set(stripped)) > 1:
        return [normalize_vqa_answer(h) for h in stripped], True
    return stripped, False


def vqa_leave_one_out_score(matches: int, num_humans: int) -> float:
    """The official score of a prediction that ``matches`` of ``num_humans`` human answers
    equal: the mean, over each human left out in turn, of ``min(1, matches among the other
    humans / 3)``. With ten humans, one to four matches score 0.3, 0.6, 0.9 and 1."""
    if not 0 <= matches <= num_humans or num_humans < 1:
        raise ValueError(f"{matches} matches of {num_humans} human answers")
    # leaving out one of the `matches` humans leaves matches - 1; leaving out another, matches
    kept = num_humans - matches
    return (
        matches * min(1.0, (matches - 1) / 3.0) + kept * min(1.0, matches / 3.0)
    ) / num_humans


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one predicted answer, in [0, 1].

    Mirrors the per-question loop of ``evaluate`` in ``vqaEval.py`` of GT-Vision-Lab/VQA at
    commit a013f00 ("Fixed processing answers bug"): the prediction and the human answers are
    stripped; only if the stripped human answers are not all identical are both the prediction
    and the human answers normalised (:func:`vqa_human_answer_forms`); the score is then
    :func:`vqa_leave_one_out_score` of the number of humans whose answer equals the
    prediction. Each human is left out by position (the official code drops the one answer
    record equal to it, and records differ by ``answer_id``).

    So with humans ``2, 2, two, Two, two , ...`` (they disagree) the prediction ``"two"``
    matches all ten and scores 1 (the 2017 evaluator, which normalised the prediction but
    only punctuation-processed the humans, gave 0.6); with ten humans ``"2"`` (they agree)
    nothing is normalised and ``"Two"`` scores 0, as does ``"yes."`` against ten ``"yes"``.
    """
    humans, normalised = vqa_human_answer_forms(human_answers)
    predicted = normalize_vqa_answer(prediction) if normalised else strip_vqa_answer(prediction)
    return vqa_leave_one_out_score(sum(h == predicted for h in humans), len(humans))


def vqa_accuracy(predicted: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one predicted answer: the same as :func:`vqa_score`."""
    return vqa_score(predicted, human_answers)


class VQAAccuracy(Metric):
    """Mean official VQA accuracy (:func:`vqa_score`) over the questions seen, a fraction in
    [0, 1] (``vqaEval.py`` reports 100 times it).

    ``update(predicted, human_answers)``: predicted answer strings and, per question, the list
    of its human answers (the ``answers`` of :class:`~flava_zoo.data.tasks.VQAv2` samples).
    ``compute()`` refuses to average over zero questions. Sums are kept in float64 so that a
    full VQAv2 split (200k questions) accumulates exactly enough.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Sequence[str], human_answers: Sequence[Sequence[str]]) -> None:
        if isinstance(predicted, str):
            raise TypeError(
                "predicted must be a sequence of answers, one per question, not a string"
            )
        if len(predicted) != len(human_answers):
            raise ValueError(
                f"{len(predicted)} predictions but {len(human_answers)} lists of human answers"
            )
        batch = sum(vqa_score(p, h) for p, h in zip(predicted, human_answers))
        self.total += batch
        self.count += len(predicted)

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            raise ValueError(
                "VQAAccuracy has no samples: refusing to report accuracy of zero questions"
            )
        return (self.total / self.count).float()


# ----------------------------------------------------------------------------------- GLUE
GLUE_SCORE_TASKS: tuple[str, ...] = (
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli",
)  # fmt: skip
"""The entries averaged into the GLUE score; MNLI's matched and mismatched sets are two."""


def _glue_spec(task: str) -> GlueTaskSpec:
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
    spec = _glue_spec(task)
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
    spec = _glue_spec(task)
    if outputs.ndim != 2 or outputs.shape[1] != spec.num_labels:
        meaning = ", ".join(spec.label_names) if spec.label_names else "a regression score"
        raise ValueError(
            f"GLUE {spec.name} needs head outputs of shape (N, {spec.num_labels}) ({meaning}), "
            f"got {tuple(outputs.shape)}"
        )
    return outputs[:, 0] if spec.is_regression else outputs.argmax(dim=1)


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
        spec = _glue_spec(task)
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
def memes_metrics(threshold: float = 0.5) -> MetricCollection:
    """Hateful Memes metrics: ``auroc`` and ``accuracy`` of the probability (or logit) of
    class 1, hateful. Accuracy thresholds probabilities at ``threshold``."""
    return MetricCollection(
        {"auroc": BinaryAUROC(), "accuracy": BinaryAccuracy(threshold=threshold)}
    )


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


def snli_ve_metrics() -> MetricCollection:
    """SNLI-VE three-way (:data:`~flava_zoo.data.tasks.SNLI_VE_LABELS`) ``accuracy``;
    ``update`` takes class indices or ``(N, 3)`` logits."""
    return MetricCollection(
        {"accuracy": MulticlassAccuracy(num_classes=len(SNLI_VE_LABELS), average="micro")}
    )
