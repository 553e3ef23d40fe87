"""``flava-zoo glue-score``: the GLUE score of a model from its results records."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..evaluation.metrics import GLUE_SCORE_TASKS, glue_score
from ..evaluation.results import PERCENT, ResultRecord, read_results

__all__ = ["glue_score_main", "glue_scores"]


def glue_scores(records: Iterable[ResultRecord], model: str | None = None) -> dict[str, dict[str, float]]:
    """``{glue_score_entry: {metric: value}}`` from records of tasks ``glue/<task>``, in
    percent; MNLI's ``dev_matched`` / ``dev_mismatched`` splits become ``mnli_matched`` /
    ``mnli_mismatched``. The latest record wins when a (task, split, metric) repeats. A record
    in another unit than ``%`` raises a ``ValueError``."""
    out: dict[str, dict[str, float]] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        if not r.task.startswith("glue/") or (model is not None and r.model != model):
            continue
        if r.unit != PERCENT:
            raise ValueError(f"{r.task} {r.split} {r.metric} is recorded in {r.unit!r}, not {PERCENT!r}")
        task = r.task.removeprefix("glue/")
        if task == "mnli":
            if "mismatched" in r.split:
                task = "mnli_mismatched"
            elif "matched" in r.split:
                task = "mnli_matched"
            else:
                continue
        out.setdefault(task, {})[r.metric] = r.value
    return out


def glue_score_main(argv: list[str]) -> int:
    """Print each GLUE task's official metrics and the GLUE score (their average), in percent.

    Returns 1, with a message naming what is wrong and no traceback, when the results file
    cannot be read, holds no GLUE records, or lacks tasks (unless ``--partial``) or a task's
    official metric.
    """
    parser = argparse.ArgumentParser(prog="flava-zoo glue-score", description=glue_score_main.__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="results file (JSON lines)")
    parser.add_argument("--model", default=None, help="only records of this model")
    parser.add_argument("--partial", action="store_true", help="average the tasks present even if some are missing")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        records = read_results(args.results)
    except (OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    models = sorted({r.model for r in records if r.task.startswith("glue/")})
    if args.model is None and len(models) > 1:
        print(f"{prog}: {args.results} holds GLUE records of {len(models)} models ({', '.join(models)}); "
              "a GLUE score averages one model's tasks: pick one with --model", file=sys.stderr)  # fmt: skip
        return 1
    scores = glue_scores(records, args.model)
    if not scores:
        print(f"{prog}: no GLUE records in {args.results}" + (f" for model {args.model}" if args.model else ""),
              file=sys.stderr)  # fmt: skip
        return 1
    unknown = sorted(set(scores) - set(GLUE_SCORE_TASKS))
    if unknown:  # the diagnostic set, for one: not part of the score
        print(f"{prog}: not in the GLUE score, left out: {', '.join(unknown)}", file=sys.stderr)
        scores = {k: v for k, v in scores.items() if k in GLUE_SCORE_TASKS}
        if not scores:
            return 1
    print(f"GLUE metrics ({PERCENT}; Matthews and Pearson / Spearman correlations x100)")
    for task in GLUE_SCORE_TASKS:
        if task in scores:
            print(f"{task:<16} " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(scores[task].items())))
        else:
            print(f"{task:<16} (missing)")
    missing = [t for t in GLUE_SCORE_TASKS if t not in scores]
    if missing and not args.partial:
        print(f"{prog}: no GLUE score: {len(missing)} of {len(GLUE_SCORE_TASKS)} tasks have no records in "
              f"{args.results}: {', '.join(missing)} (--partial averages the tasks present)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        score = glue_score(scores, require_all_tasks=not args.partial)
    except ValueError as e:
        print(f"{prog}: no GLUE score: {e}", file=sys.stderr)
        return 1
    shown = f" (partial: {len(scores)} of {len(GLUE_SCORE_TASKS)} tasks)" if missing else ""
    print(f"GLUE score {score:.2f} {PERCENT}" + shown)
    return 0
