"""``flava-zoo glue-score``: the GLUE score of a model from its results records."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ..evaluation.metrics import GLUE_SCORE_TASKS, glue_score
from ..evaluation.results import ResultRecord, read_results

__all__ = ["glue_score_main", "glue_scores"]


def glue_scores(records: Iterable[ResultRecord], model: str | None = None) -> dict[str, dict[str, float]]:
    """``{glue_score_entry: {metric: value}}`` from records of tasks ``glue/<task>``; MNLI's
    ``dev_matched`` / ``dev_mismatched`` splits become ``mnli_matched`` / ``mnli_mismatched``.
    The latest record wins when a (task, split, metric) repeats."""
    out: dict[str, dict[str, float]] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        if not r.task.startswith("glue/") or (model is not None and r.model != model):
            continue
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
    """Print each GLUE task's official metrics and the GLUE score (their average)."""
    parser = argparse.ArgumentParser(prog="flava-zoo glue-score", description=glue_score_main.__doc__)
    parser.add_argument("--results", required=True, help="results file (JSON lines)")
    parser.add_argument("--model", default=None, help="only records of this model")
    parser.add_argument("--partial", action="store_true", help="average the tasks present even if some are missing")
    args = parser.parse_args(argv)
    scores = glue_scores(read_results(args.results), args.model)
    if not scores:
        print(f"no GLUE records in {args.results}")
        return 1
    for task in GLUE_SCORE_TASKS:
        if task in scores:
            print(f"{task:<16} " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores[task].items())))
        else:
            print(f"{task:<16} (missing)")
    score = glue_score(scores, require_all_tasks=not args.partial)
    print(f"GLUE score {score:.4f}" + (" (partial)" if len(scores) < len(GLUE_SCORE_TASKS) else ""))
    return 0
