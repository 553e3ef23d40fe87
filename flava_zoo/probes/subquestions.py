"""subquestions: entailed question pairs. When a VQA classifier (--classifier, trained on
shapes/vqa) answers "what colour is the circle?" right (red), does it also answer the
sub-question that answer implies, "is there a red circle?", right (yes)? SQuINT's
consistency (Selvaraju et al., CVPR 2020), on the shapes world's ground truth.

Pairs come from ShapesVQA.entailed_pairs (both questions in the generator's own templates,
both answers true of the scene): colour=>exists, colour=>absent ("... is there a blue
circle?" no), shape=>exists, shape=>absent, size=>exists, count=>absent ("how many stars are
there?" zero => "is there a green star?" no). Each test scene gives one pair, drawn at random
(``--seed``): a rule uniformly among the scene's rules, then one of its pairs (a scene has up
to five count=>absent pairs, which would otherwise dominate), so the items are independent
scenes. Answers are the
classifier's top answer over its whole vocabulary. In percent:

    main_accuracy = 100 * [main answer right]
    sub_accuracy  = 100 * [sub-question answer right]
    consistency   = 100 * P(sub right | main right), over the items whose main answer is right
    consistency/<rule> and main_accuracy/<rule>: the same per rule

Chance: a random answerer guessing uniformly among the answers of each question's type gets
its main accuracy at the mean of 1 / (answers of the main question's type), and its
consistency equals its sub-question accuracy: 50% (every sub-question is yes/no). A
consistency near the sub-question accuracy says the right main answers were not reached
through the fact the sub-question checks. Intervals: 95% percentile bootstrap over the items
(for consistency, over the items with a right main answer; 1,000 resamples). Cost: two
classifier calls per item: seconds for flava-tiny at the default 300 items.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..evaluation.results import ResultRecord
from . import PROBES
from ._perturbations import bar_figure, classify, rate, vqa_items
from .common import ProbeContext
from .occlusion import answers_per_type

__all__ = ["RULES", "SUMMARY", "add_arguments", "run"]

SUMMARY = PROBES["subquestions"]
RULES = ("colour=>exists", "colour=>absent", "shape=>exists", "shape=>absent", "size=>exists", "count=>absent")
"""The entailment rules of ShapesVQA.entailed_pairs, in its order."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options."""
    parser.add_argument("--split", default="test", help="shapes split of the scenes (default test)")


def _rows(pairs: list[dict[str, Any]], main_ok: np.ndarray, sub_ok: np.ndarray, odds: dict[str, int],
          seed: int, suffix: str) -> dict[str, Any]:  # fmt: skip
    """main_accuracy, sub_accuracy and (when a main answer is right) consistency of ``pairs``."""
    rows: dict[str, Any] = {}
    main_chance = float(np.mean([100.0 / odds[p["question_type"]] for p in pairs]))
    sub_chance = float(np.mean([100.0 / odds[p["sub_question_type"]] for p in pairs]))
    rows[f"main_accuracy{suffix}"] = rate(main_ok * 100.0, seed, main_chance)
    rows[f"sub_accuracy{suffix}"] = rate(sub_ok * 100.0, seed, sub_chance)
    if main_ok.any():
        rows[f"consistency{suffix}"] = rate(sub_ok[main_ok] * 100.0, seed, sub_chance)
    return rows


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[ResultRecord]:
    """Ask each scene's drawn main question and its sub-question; write accuracies and
    consistency, overall and per rule, and their figure."""
    clf, split, vqa, n, rng = vqa_items(ctx, args, "subquestions")
    pairs, images = [], []
    for i in range(n):
        found = vqa.entailed_pairs(i)  # never empty: every object gives a size=>exists pair
        rule = rng.choice([r for r in RULES if any(p["rule"] == r for p in found)])
        pairs.append(rng.choice([p for p in found if p["rule"] == rule]))
        images.append(ctx.world.image(split, i))
    logits = classify(ctx, clf, images * 2, [p["question"] for p in pairs] + [p["sub_question"] for p in pairs], "subquestions")
    answers = [clf.label_names[k] for k in logits.argmax(-1).tolist()]
    main_ok = np.asarray([a == p["answer"] for a, p in zip(answers[:n], pairs)])
    sub_ok = np.asarray([a == p["sub_answer"] for a, p in zip(answers[n:], pairs)])
    odds = answers_per_type(ctx.world)
    rows = _rows(pairs, main_ok, sub_ok, odds, ctx.seed, "")
    per_rule: dict[str, int] = {}
    for rule in RULES:
        mask = np.asarray([p["rule"] == rule for p in pairs])
        if mask.any():
            per_rule[rule] = int(mask.sum())
            chosen = [p for p, m in zip(pairs, mask) if m]
            rows.update(_rows(chosen, main_ok[mask], sub_ok[mask], odds, ctx.seed, f"/{rule}"))
    hyper = {"n": n, "seed": ctx.seed, "main_right": int(main_ok.sum()), "pairs_per_rule": per_rule}
    records = ctx.writer.write("subquestions", split, rows, n, hyper)
    shown = {k: m for k, m in rows.items() if k.startswith("consistency") or "/" not in k}
    bar_figure(ctx, "subquestions", "consistency", shown,
               "Entailed pairs: accuracy on main and sub-questions, and consistency = P(sub right | main "
               "right), overall and per rule; dashed: chance; bars: 95% bootstrap intervals")  # fmt: skip
    return records
