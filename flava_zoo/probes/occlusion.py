"""occlusion: hide the object a question is about (the answer must change) or a distractor
(the answer must not). Does a VQA classifier (--classifier, trained on shapes/vqa) answer
from the evidence in the image?

For each test scene, its shapes VQA question (ShapesVQA, the split's own question) is asked
of three images: the scene, the scene with a target hidden and the scene with a distractor
hidden. Hiding renders the scene without the object (:func:`hide`): its pixels become the
background (or an object it covered), exactly, since the background is drawn independently
of the objects. Target and distractor come from the ground truth (ShapesVQA.answer):

- a target is an object whose removal changes the true answer: the object a colour, shape
  or size question names, the object of an "is there ...?" question answered yes, any of
  the counted objects of a count question;
- a distractor is any other object: its removal leaves the true answer as it was ("is there
  a green star?" no stays no with any object hidden; "how many objects?" has no distractor).

One target and one distractor per item are drawn at random (``--seed``). Per question type
(colour, shape, count, exists, size) and over all items, in percent:

    target_changed         = 100 * [answer(target hidden) != answer(scene)]
    distractor_unchanged   = 100 * [answer(distractor hidden) == answer(scene)]
    evidence               = mean over the items with both a target and a distractor of
                             100 * ([changed, target hidden] - [changed, distractor hidden]),
                             i.e. rate(changed | target) - rate(changed | distractor), in
                             percentage points (unit %), from -100 to 100; chance 0
    accuracy               = 100 * [answer(scene) == truth]; chance 1 / (answers of the type)
    target_hidden_accuracy = the same on the target-hidden scene, where its truth is defined
                             (exists: now no; count: one fewer); colour, shape and size
                             questions lose their referent and have no true answer

The evidence score is 0 for a model that ignores the image and for one that reacts to any
pixel change alike; 100 for one whose answer moves exactly when its evidence goes. The
changed rates have no chance level (a random answerer changes its answer 1 - 1/K of the
time whatever is hidden). Answers are the classifier's top answer over its whole
vocabulary. Intervals: 95% percentile bootstrap over the items (1,000 resamples). Cost: three
classifier calls per item: seconds for flava-tiny at the default 300 items.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import numpy as np

from ..evaluation.results import ResultRecord
from . import PROBES
from ._perturbations import bar_figure, classify, rate, vqa_items
from .common import ProbeContext

__all__ = ["QUESTION_TYPES", "SUMMARY", "add_arguments", "answers_per_type", "hide", "run", "targets_and_distractors"]

SUMMARY = PROBES["occlusion"]
QUESTION_TYPES = ("colour", "shape", "count", "exists", "size")


def hide(scene: Any, index: int) -> Any:
    """``scene`` without object ``index``: the same background and the other objects, in
    their drawing order; rendered, the hidden object's pixels are background (or the object
    it covered)."""
    objects = tuple(o for k, o in enumerate(scene.objects) if k != index)
    return dataclasses.replace(scene, objects=objects)


def targets_and_distractors(vqa: Any, question: str, scene: Any) -> tuple[list[int], list[int]]:
    """The objects of ``scene`` whose removal changes the true answer to ``question``
    (targets) and those whose removal does not (distractors), by
    :meth:`~flava_zoo.data.shapes.ShapesVQA.answer`."""
    truth = vqa.answer(question, scene)
    targets, distractors = [], []
    for k in range(len(scene.objects)):
        (distractors if vqa.answer(question, hide(scene, k)) == truth else targets).append(k)
    return targets, distractors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options."""
    parser.add_argument("--split", default="test", help="shapes split of the scenes (default test)")


def answers_per_type(world: Any) -> dict[str, int]:
    """How many answers each shapes VQA question type has (a random answerer's odds are one
    in that): colours, shapes, zero to three, yes/no, sizes."""
    return {
        "colour": len(world.COLOURS), "shape": len(world.SHAPES), "count": 4,
        "exists": 2, "size": len(world.SIZES),
    }  # fmt: skip


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[ResultRecord]:
    """Ask each item's question of the scene, the target-hidden and the distractor-hidden
    scene; write the rates per question type and the evidence-use figure."""
    clf, split, vqa, n, rng = vqa_items(ctx, args, "occlusion")
    world = ctx.world
    items: list[dict[str, Any]] = []
    images: list[Any] = []
    texts: list[str] = []
    for i in range(n):
        ann = vqa.annotation(i)
        scene = world.scene(split, i)
        targets, distractors = targets_and_distractors(vqa, ann["question"], scene)
        item: dict[str, Any] = {"type": ann["question_type"], "truth": ann["answer"], "at": len(texts)}
        images.append(world.render(scene))
        texts.append(ann["question"])
        if targets:
            hidden = hide(scene, rng.choice(targets))
            item["target"], item["target_truth"] = len(texts), vqa.answer(ann["question"], hidden)
            images.append(world.render(hidden))
            texts.append(ann["question"])
        if distractors:
            item["distractor"] = len(texts)
            images.append(world.render(hide(scene, rng.choice(distractors))))
            texts.append(ann["question"])
        items.append(item)
    logits = classify(ctx, clf, images, texts, "occlusion")
    answers = [clf.label_names[k] for k in logits.argmax(-1).tolist()]
    odds = answers_per_type(world)
    rows: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for kind in (*QUESTION_TYPES, "all"):
        group = [it for it in items if kind in ("all", it["type"])]
        if not group:
            continue
        counts[kind] = len(group)
        base = [answers[it["at"]] for it in group]
        chance = float(np.mean([100.0 / odds[it["type"]] for it in group]))
        rows[f"accuracy/{kind}"] = rate([100.0 * (b == it["truth"]) for b, it in zip(base, group)], ctx.seed, chance)
        with_t = [it for it in group if "target" in it]
        with_d = [it for it in group if "distractor" in it]
        if with_t:
            changed_t = [100.0 * (answers[it["target"]] != answers[it["at"]]) for it in with_t]
            rows[f"target_changed/{kind}"] = rate(changed_t, ctx.seed)
            defined = [it for it in with_t if it["target_truth"] is not None]
            if defined:
                rows[f"target_hidden_accuracy/{kind}"] = rate(
                    [100.0 * (answers[it["target"]] == it["target_truth"]) for it in defined], ctx.seed,
                    float(np.mean([100.0 / odds[it["type"]] for it in defined])),
                )  # fmt: skip
        if with_d:
            same_d = [100.0 * (answers[it["distractor"]] == answers[it["at"]]) for it in with_d]
            rows[f"distractor_unchanged/{kind}"] = rate(same_d, ctx.seed)
        both = [it for it in group if "target" in it and "distractor" in it]
        if both:
            score = [
                100.0 * ((answers[it["target"]] != answers[it["at"]]) - (answers[it["distractor"]] != answers[it["at"]]))
                for it in both
            ]  # fmt: skip
            rows[f"evidence/{kind}"] = rate(score, ctx.seed, 0.0)
    hyper = {"n": n, "seed": ctx.seed, "items_per_type": counts}
    records = ctx.writer.write("occlusion", split, rows, n, hyper)
    evidence = {k: m for k, m in rows.items() if k.startswith("evidence/")}
    if evidence:
        bar_figure(ctx, "occlusion", "evidence", evidence,
                   "Evidence use per question type: how much more often the answer changes when the "
                   "queried object is hidden than when a distractor is (percentage points); dashed: "
                   "chance (0); bars: 95% bootstrap intervals", ylabel="percentage points")  # fmt: skip
    changed = {k: m for k, m in rows.items() if k.startswith(("target_changed/", "distractor_unchanged/"))}
    if changed:
        bar_figure(ctx, "occlusion", "changes", changed,
                   "How often the answer changes with the target hidden (should be 100) and stays with "
                   "a distractor hidden (should be 100); bars: 95% bootstrap intervals")  # fmt: skip
    return records
