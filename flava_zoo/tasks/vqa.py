"""Visual question answering: the official answer normalisation and accuracy, and the
``vqa`` task family (image + question -> soft scores over an answer vocabulary).

The VQA accuracy is a re-implementation of the current official evaluator,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of github.com/GT-Vision-Lab/VQA at commit
a013f00 ("Fixed processing answers bug", 2021), quirks included, so that numbers compare
with published ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from .spec import Options, Source, TaskSpec, register

__all__ = [
    "VQA",
    "VQAAccuracy",
    "normalize_vqa_answer",
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


# ------------------------------------------------------------------------ the family
SHAPES_HUMANS = 10
"""A shapes VQA answer is repeated as ten human answers, so the official VQA accuracy of a
prediction is 1 when it matches and 0 otherwise (exact match)."""


def shapes_soft_target(sample: Mapping[str, Any], out: dict[str, Any], num_answers: int) -> None:
    """A shapes VQA sample's one answer as the official kind of target: a one-hot soft
    score over the ``num_answers`` answers and ten identical human answers."""
    target = torch.zeros(num_answers)
    target[sample["label"]] = 1.0
    out["target"] = target
    out["answers"] = [sample["answer"]] * SHAPES_HUMANS


def vqa_metrics(num_labels: int, options: Options) -> MetricCollection:
    """The official VQA accuracy (:class:`VQAAccuracy`) as ``vqa_accuracy``."""
    return MetricCollection({"vqa_accuracy": VQAAccuracy()})


def predicted_answers(logits: Tensor, label_names: Sequence[str], options: Options) -> list[str]:
    """The answer of each row of head outputs ``(B, num_answers)``: the top-scoring one."""
    return [label_names[i] for i in logits.argmax(1).tolist()]


def _vqav2_split(spec: Mapping[str, Any]) -> str | None:
    """The split of an official VQAv2 file name: ``val2014`` in
    ``v2_OpenEnded_mscoco_val2014_questions.json``, else the file's stem."""
    if not spec.get("questions_json"):
        return None
    stem = PurePath(str(spec["questions_json"])).stem
    match = _VQA_SPLIT_IN_NAME.search(stem)
    return match.group(0) if match else stem


_VQA_SPLIT_IN_NAME = re.compile(r"(test-dev|train|val|test)(\d{4})")

VQA = register(
    TaskSpec(
        name="vqa",
        inputs="multimodal",
        shapes=Source(
            "shapes", "flava_zoo.data.shapes:ShapesVQA",
            keys={"image": "image", "text": "question", "label": "label", "index": "index"},
            labels="answer_vocabulary", derive=shapes_soft_target,
        ),
        official=(
            Source(
                "vqav2", "flava_zoo.data.tasks:VQAv2",
                keys={"image": "image", "text": "question", "label": "label", "target": "target",
                      "answers": "answers", "index": "index"},
                defaults={"annotations_json": None},  # test-dev / test files have none
                answer_vocab=True, test_split_name=_vqav2_split,
            ),
        ),
        targets="soft",
        loss="bce",
        metrics=vqa_metrics,
        metric_inputs=predicted_answers,
        metric_target="answers",
        prediction="sigmoid_top",
        modes=("finetune",),
    )
)  # fmt: skip
"""Image + question -> soft scores over the answer vocabulary, scored by the official VQA
accuracy; shapes VQA, or VQAv2."""
