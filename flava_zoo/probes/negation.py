"""negation: captions and yes/no questions against their negations (VQA-LOL style, Gokhale
et al. ECCV 2020). Does the model's answer flip when the text says the opposite?

Kinds (``--kinds``, default ``auto``: captions, plus questions with ``--classifier``, plus
vqav2 with ``--vqav2-questions``):

captions (the backbone; ITM rows need an ITM head). Test scene i gets a true statement and
  its negation, which is false of the image, built from the scene so that both truths are
  known: half the items affirmative ("there is a red circle", an object of the scene, against
  "there is no red circle"), half negative ("there is no green star", a seen combination the
  scene lacks, against "there is a green star"). Both forms are the world's own caption and
  claim templates. Per item, 100 when the true text wins, 50 on a tie, 0 otherwise:
    caption/contrastive_drop = 100 * [cos(image, true) > cos(image, negated)]
    caption/itm_paired       = 100 * [P_match(true) > P_match(negated)]
    caption/itm_flip         = 100 * [P_match(true) > 0.5 and P_match(negated) < 0.5]
  with /affirmative and /negative rows per polarity (a model blind to "no" wins one polarity
  and loses the other), and caption/similarity_gap = mean cos(true) - cos(negated) (unit 1).
  Chance: 50% for the paired rates (the polarities are balanced, so even a model that always
  prefers the text with "no" gets 50%), 25% for itm_flip (two independent fair coins).

questions (a VQA classifier, --classifier, trained on shapes/vqa or vqav2). "is there a red
  circle?" (yes/no balanced as in the generator) against "is there no red circle?", whose
  answer is the opposite. The negated form is not in the generator's templates: it is out of
  the training distribution, and that is the point (VQA-LOL's finding: VQA models answer
  negated questions like the plain ones). The answer is read as yes when the yes logit beats
  the no logit.
    question/consistency     = 100 * [answer(negated) != answer(original)]   chance 50
    question/accuracy        = 100 * [answer(original) == truth]             chance 50
    question/accuracy_negated= 100 * [answer(negated) == not truth]          chance 50
    question/both_correct    = both right                                    chance 25
    question/outside_yes_no  = the unrestricted top answer to the negated question is
                               neither yes nor no (no chance level)
  Chance: a model answering yes or no at random.

vqav2 (the same rows on the user's VQAv2 files in the official format: --vqav2-questions,
  --vqav2-annotations, --images). The yes/no questions (annotation answer_type "yes/no" with a
  majority answer of yes or no) are negated by the rules of :func:`negate_question`; the ones
  no rule reads are skipped and question/negatable says how many were read. The truth is the
  annotators' majority answer (multiple_choice_answer), flipped for the negation.

Intervals: 95% percentile bootstrap over the items (1,000 resamples). Cost: per item one
image and two texts through the towers (two fusions with an ITM head, two classifier calls
per question): seconds for flava-tiny at the default 500 items.
"""

from __future__ import annotations

import argparse
import random
import re
import warnings
from typing import Any

import numpy as np

from ..evaluation.results import ResultRecord
from . import PROBES
from ._perturbations import bar_figure, classify, rate, scene_count, yes_no
from .common import ProbeContext, ProbeError

__all__ = ["NEGATION_RULES", "SUMMARY", "add_arguments", "negate_question", "run"]

SUMMARY = PROBES["negation"]
KINDS = ("captions", "questions", "vqav2")
_TASKS = ["shapes/vqa", "vqav2"]

# ---------------------------------------------------------------- rule-based negation
_BE = "is|are|was|were"
_DO = "does|do|did|can|could|will|would|should|has|have|had|may|might|must"
_PRONOUN = "it|he|she|they|you|we|i"
_DEMONSTRATIVE = "this|that|these|those"
_DETERMINER = "the|a|an|this|that|these|those|his|her|its|their|my|your|our"
_NP_START = "a|an|the|some|any|his|her|its|their|my|your|our"
_PREPOSITION = (
    "in|on|at|under|over|behind|near|next|inside|outside|above|below|beside|by|with|from|for|"
    "to|into|onto|through|against|up|down|off|out"
)
_VERB = (
    "have|look|appear|seem|need|contain|match|belong|like|fit|work|go|show|use|wear|hold|see|"
    "allow|serve|taste|make|say|feel|smell|move|cast|come"
)
_ING_NOUNS = frozenset(
    "building ceiling clothing painting railing ring string thing king wing morning evening "
    "icing awning sibling bedding swing sling spring pudding".split()
)
_NOT_AFTER_THERE = (
    "only|more|less|fewer|enough|many|much|several|lots?|too|room|one|two|three|four|five|six|"
    "seven|eight|nine|ten|something|anything|someone|anyone|somebody|anybody|\\d+"
)
_NEGATIVE = re.compile(r"\b(?:not|no|never|nothing|none|nobody|neither|nor)\b|n't\b", re.I)

NEGATION_RULES: tuple[tuple[str, str], ...] = (
    ("there", "BE there [a|an|any|some] X -> BE there no X (not before only, more, a number, ...)"),
    ("pronoun", "AUX PRONOUN X -> AUX PRONOUN not X (it, he, she, they, you, we, i)"),
    ("demonstrative", "AUX this|that|these|those X -> ... not X, when X opens a noun phrase, a "
     "preposition or an -ing verb (the demonstrative is then the subject)"),
    ("be_noun", "BE DET NOUN X -> BE DET NOUN not X, for a one-word noun and X a preposition, an "
     "-ing verb (not building, ceiling, ...) or the question's last word"),
    ("do_noun", "AUX DET NOUN VERB X -> AUX DET NOUN not VERB X, for a one-word noun and a common "
     "base-form verb (have, look, appear, ...)"),
)  # fmt: skip
"""The rules of :func:`negate_question`, tried in this order (name, what it rewrites)."""

_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("there", re.compile(rf"^(?P<aux>{_BE}) there (?:(?:a|an|any|some) )?(?!(?:{_NOT_AFTER_THERE})\b)(?P<rest>\w.*)$", re.I),
     "{aux} there no {rest}"),
    ("pronoun", re.compile(rf"^(?P<aux>{_BE}|{_DO}) (?P<subj>{_PRONOUN}) (?P<rest>\w.*)$", re.I),
     "{aux} {subj} not {rest}"),
    ("demonstrative", re.compile(
        rf"^(?P<aux>{_BE}|{_DO}) (?P<subj>{_DEMONSTRATIVE}) (?P<rest>(?:(?:{_NP_START}|{_PREPOSITION})\b|\w+ing\b).*)$", re.I),
     "{aux} {subj} not {rest}"),
    ("be_noun", re.compile(rf"^(?P<aux>{_BE}) (?P<det>{_DETERMINER}) (?P<noun>\w+) (?P<rest>(?P<next>\w+)\b.*)$", re.I),
     "{aux} {det} {noun} not {rest}"),
    ("do_noun", re.compile(rf"^(?P<aux>{_DO}) (?P<det>{_DETERMINER}) (?P<noun>\w+) (?P<rest>(?:{_VERB})\b.*)$", re.I),
     "{aux} {det} {noun} not {rest}"),
)  # fmt: skip
_LAST_WORD = re.compile(r"^\w+\s*\??$")
_PREPOSITION_RE = re.compile(rf"^(?:{_PREPOSITION})$", re.I)


def negate_question(question: str) -> str | None:
    """The negation of an English yes/no question, or ``None`` when no rule of
    :data:`NEGATION_RULES` reads it (or it is negative already: not, no, n't, never, ...).

    A small rule set over the string, no parser: ``"Is there a dog?"`` -> ``"Is there no
    dog?"``, ``"Are there any people?"`` -> ``"Are there no people?"``, ``"Is it raining?"`` ->
    ``"Is it not raining?"``, ``"Is this a kitchen?"`` -> ``"Is this not a kitchen?"``, ``"Is the
    man wearing a hat?"`` -> ``"Is the man not wearing a hat?"``, ``"Is the bus red?"`` -> ``"Is
    the bus not red?"``, ``"Does the dog have a collar?"`` -> ``"Does the dog not have a
    collar?"``. It inserts "not" after the subject (or "no" for "there is"), never the
    contracted "isn't the man ...?", whose expected answer does not flip in English. It
    declines rather than guesses: a subject of more than one word ("is the red car parked?"),
    a possessive ("is the man's shirt red?") or a "there" before a quantity ("is there only one
    dog?") get ``None``.
    """
    text = " ".join(question.strip().split())
    if not text or _NEGATIVE.search(text):
        return None
    for name, pattern, template in _RULES:
        m = pattern.match(text)
        if m is None:
            continue
        if name == "demonstrative" and m["rest"].split()[0].lower().strip("?") in _ING_NOUNS:
            continue
        if name == "be_noun":
            nxt, rest = m["next"], m["rest"]
            verb_ing = nxt.lower().endswith("ing") and nxt.lower() not in _ING_NOUNS
            if not (_PREPOSITION_RE.match(nxt) or verb_ing or _LAST_WORD.match(rest)):
                continue
        return template.format(**m.groupdict())
    return None


# ---------------------------------------------------------------------------- probe
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options."""
    parser.add_argument("--kinds", default="auto",
                        help="comma-separated: captions, questions, vqav2 (default auto: captions, "
                             "questions with --classifier, vqav2 with --vqav2-questions)")
    parser.add_argument("--split", default="test", help="shapes split of the scenes (default test)")
    parser.add_argument("--vqav2-questions", dest="vqav2_questions", default=None,
                        help="official VQAv2 questions JSON (v2_OpenEnded_mscoco_*_questions.json)")
    parser.add_argument("--vqav2-annotations", dest="vqav2_annotations", default=None,
                        help="its official annotations JSON (the yes/no truth)")
    parser.add_argument("--images", default=None, help="folder of the VQAv2 images (COCO_val2014_*.jpg)")
    parser.add_argument("--image-pattern", dest="image_pattern", default="COCO_{subtype}_{image_id:012d}.jpg",
                        help="image file name under --images (default COCO's)")  # fmt: skip


def _kinds(ctx: ProbeContext, args: argparse.Namespace) -> list[str]:
    spec = str(getattr(args, "kinds", "auto") or "auto")
    if spec == "auto":
        kinds = ["captions"]
        if ctx.classifier is not None:
            kinds.append("questions")
        if getattr(args, "vqav2_questions", None):
            kinds.append("vqav2")
        return kinds
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ProbeError(f"--kinds: unknown kind {unknown[0] if unknown else spec!r}; kinds: {', '.join(KINDS)}")
    return kinds


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _absent(world: Any, scene: Any, rng: random.Random) -> tuple[str, str]:
    present = {o.combination for o in scene.objects}
    return rng.choice([c for c in world.seen_combinations if c not in present])


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per item 100 when ``a > b``, 50 on a tie, 0 otherwise (ties split: chance stays 50)."""
    return np.where(a > b, 100.0, np.where(a == b, 50.0, 0.0))


def _captions(ctx: ProbeContext, split: str, n: int) -> tuple[dict[str, Any], list[ResultRecord]]:
    world = ctx.world
    rng = random.Random(f"negation/captions/{ctx.seed}")
    images, true, negated, affirmative = [], [], [], []
    for i in range(n):
        scene = world.scene(split, i)
        images.append(world.render(scene))
        if rng.random() < 0.5:
            obj = rng.choice(scene.objects)
            true.append(f"there is {_article(f'{obj.colour} {obj.shape}')}")
            negated.append(f"there is no {obj.colour} {obj.shape}")
            affirmative.append(True)
        else:
            colour, shape = _absent(world, scene, rng)
            true.append(f"there is no {colour} {shape}")
            negated.append(f"there is {_article(f'{colour} {shape}')}")
            affirmative.append(False)
    aff = np.asarray(affirmative)
    image = ctx.embed(images=images)
    cos_true = (image * ctx.embed(texts=true)).sum(-1).numpy()
    cos_neg = (image * ctx.embed(texts=negated)).sum(-1).numpy()
    rows: dict[str, Any] = {}

    def add(name: str, per_item: np.ndarray, chance: float) -> None:
        rows[name] = rate(per_item, ctx.seed, chance)
        for label, mask in (("affirmative", aff), ("negative", ~aff)):
            if mask.any():
                rows[f"{name}/{label}"] = rate(per_item[mask], ctx.seed, chance)

    add("caption/contrastive_drop", _paired(cos_true, cos_neg), 50.0)
    if ctx.itm_head() is not None:
        p_true = ctx.itm_probability(images, true).numpy()
        p_neg = ctx.itm_probability(images, negated).numpy()
        add("caption/itm_paired", _paired(p_true, p_neg), 50.0)
        add("caption/itm_flip", ((p_true > 0.5) & (p_neg < 0.5)) * 100.0, 25.0)
    rows["caption/similarity_gap"] = rate(cos_true - cos_neg, ctx.seed, None, unit="1")
    hyper = {"kind": "captions", "n": n, "affirmative": int(aff.sum()), "seed": ctx.seed}
    return rows, ctx.writer.write("negation", split, rows, n, hyper)


def _question_rows(ctx: ProbeContext, images: list[Any], questions: list[str], negations: list[str],
                   truth_yes: np.ndarray, desc: str) -> dict[str, Any]:  # fmt: skip
    """The question/ rows of items (image, question, its negation, the question's truth)."""
    clf = ctx.need_classifier("negation", _TASKS)
    orig_yes, _ = yes_no(classify(ctx, clf, images, questions, f"{desc} questions"), clf.label_names, "negation")
    neg_yes, outside = yes_no(classify(ctx, clf, images, negations, f"{desc} negations"), clf.label_names, "negation")
    right = orig_yes == truth_yes
    right_neg = neg_yes != truth_yes
    return {
        "question/consistency": rate((orig_yes != neg_yes) * 100.0, ctx.seed, 50.0),
        "question/accuracy": rate(right * 100.0, ctx.seed, 50.0),
        "question/accuracy_negated": rate(right_neg * 100.0, ctx.seed, 50.0),
        "question/both_correct": rate((right & right_neg) * 100.0, ctx.seed, 25.0),
        "question/outside_yes_no": rate(outside * 100.0, ctx.seed, None),
    }


def _questions(ctx: ProbeContext, split: str, n: int) -> tuple[dict[str, Any], list[ResultRecord]]:
    world = ctx.world
    ctx.need_classifier("negation", _TASKS)
    rng = random.Random(f"negation/questions/{ctx.seed}")
    images, questions, negations, truth = [], [], [], []
    for i in range(n):
        scene = world.scene(split, i)
        images.append(world.render(scene))
        if rng.random() < 0.5:
            colour, shape = rng.choice(scene.objects).combination
            truth.append(True)
        else:
            colour, shape = _absent(world, scene, rng)
            truth.append(False)
        questions.append(f"is there {_article(f'{colour} {shape}')}?")
        negations.append(f"is there no {colour} {shape}?")
    rows = _question_rows(ctx, images, questions, negations, np.asarray(truth), "shapes")
    hyper = {"kind": "questions", "n": n, "seed": ctx.seed, "negation": "is there no <colour> <shape>?"}
    return rows, ctx.writer.write("negation", split, rows, n, hyper)


def _vqav2(ctx: ProbeContext, args: argparse.Namespace, n: int) -> tuple[dict[str, Any], list[ResultRecord]]:
    from pathlib import Path

    from ..data.tasks import TaskDataError, VQAv2
    from ..tasks.vqa import normalize_vqa_answer

    questions_json = getattr(args, "vqav2_questions", None)
    annotations_json = getattr(args, "vqav2_annotations", None)
    images_dir = getattr(args, "images", None)
    if not questions_json:
        raise ProbeError("--kinds vqav2 needs --vqav2-questions FILE (official VQAv2 questions JSON)")
    if not annotations_json:
        raise ProbeError("--vqav2-questions needs --vqav2-annotations FILE: the annotations give the yes/no truth")
    if not images_dir:
        raise ProbeError("--vqav2-questions needs --images DIR, the folder of its images")
    clf = ctx.need_classifier("negation", _TASKS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-vocabulary answers: only yes/no are read
            data = VQAv2(questions_json, annotations_json, images_dir, answer_vocab=list(clf.label_names),
                         image_pattern=str(args.image_pattern))  # fmt: skip
    except (TaskDataError, FileNotFoundError, ValueError) as e:
        raise ProbeError(f"--vqav2-questions {questions_json}: {e}") from None
    # The reader's parsed questions (VQAv2 has no public accessor of them without the image,
    # and opening every image of a 200k-question file to filter the yes/no ones is slow).
    candidates = [
        (i, q) for i, q in enumerate(data._questions)
        if q.answer_type == "yes/no" and q.answer is not None and normalize_vqa_answer(q.answer) in ("yes", "no")
    ]  # fmt: skip
    if not candidates:
        raise ProbeError(f"--vqav2-annotations {annotations_json}: no yes/no question with a yes or no majority answer")
    negated = [(i, q, negate_question(q.question)) for i, q in candidates]
    readable = [(i, q, neg) for i, q, neg in negated if neg is not None]
    split = Path(questions_json).stem
    negatable = rate(np.asarray([neg is not None for _, _, neg in negated]) * 100.0, ctx.seed, None)
    if not readable:
        raise ProbeError(f"--vqav2-questions {questions_json}: none of its {len(candidates)} yes/no questions is negated by the rules")
    records = ctx.writer.write("negation", split, {"question/negatable": negatable}, len(candidates),
                               {"kind": "vqav2", "rules": [r for r, _ in NEGATION_RULES]})  # fmt: skip
    if len(readable) > n:
        keep = sorted(random.Random(f"negation/vqav2/{ctx.seed}").sample(range(len(readable)), n))
        readable = [readable[k] for k in keep]
    try:
        images = [data[i]["image"] for i, _, _ in readable]
    except (TaskDataError, FileNotFoundError, OSError) as e:
        raise ProbeError(f"--images {images_dir}: {e}") from None
    truth = np.asarray([normalize_vqa_answer(q.answer) == "yes" for _, q, _ in readable])
    rows = _question_rows(ctx, images, [q.question for _, q, _ in readable], [neg for _, _, neg in readable], truth, "vqav2")
    hyper = {"kind": "vqav2", "n": len(readable), "seed": ctx.seed, "questions": str(questions_json),
             "annotations": str(annotations_json)}  # fmt: skip
    records += ctx.writer.write("negation", split, rows, len(readable), hyper)
    return {"question/negatable": negatable, **rows}, records


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[ResultRecord]:
    """Run the kinds ``--kinds`` names; one figure of their rates against chance."""
    kinds = _kinds(ctx, args)
    split = str(getattr(args, "split", "test") or "test")
    try:
        ctx.world.split_size(split)
    except ValueError as e:
        raise ProbeError(f"--split: {e}") from None
    n = ctx.items(500)
    records: list[ResultRecord] = []
    shown: dict[str, Any] = {}
    for kind in kinds:
        if kind == "captions":
            rows, recs = _captions(ctx, split, scene_count(ctx, split, n, "negation"))
            shown.update({k: m for k, m in rows.items() if m.unit == "%"})
        elif kind == "questions":
            rows, recs = _questions(ctx, split, scene_count(ctx, split, n, "negation"))
            shown.update({k: m for k, m in rows.items() if m.chance is not None})
        else:
            rows, recs = _vqav2(ctx, args, n)
            shown.update({f"vqav2 {k}": m for k, m in rows.items() if m.chance is not None})
        records += recs
    if shown:
        bar_figure(ctx, "negation", "rates", shown,
                   "Negation: how often the true text beats its negation (captions) and the answer "
                   "flips with the question's negation; dashed: chance; bars: 95% bootstrap intervals")  # fmt: skip
    return records
