"""From ``flava-zoo predict``'s rows to the official submission files of the task's source.

The formats and their rules live in :mod:`flava_zoo.evaluation.submissions`; this module only
knows which TaskData source has which format and where its reference file (the question
file, the test TSV, the test JSONL) is:

============== ============================================= ==============================
source         file(s) written into the submission folder    checked against
============== ============================================= ==============================
``vqav2``      ``vqa_OpenEnded_mscoco_<split>_flava-zoo_      the split's question file
               results.json``
``glue``       ``<Task>.tsv`` (``SST-2.tsv``, ``MNLI-m.tsv``,  the split's test TSV (only
               ``AX.tsv``, ...)                               label-less test splits)
``hateful_     ``<jsonl stem>_submission.csv``                the split's JSONL
memes``
============== ============================================= ==============================

Other sources (the shapes world, CIFAR, SNLI-VE, Karpathy retrieval) have no submission
format beyond the predictions JSONL.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .data import TaskData

__all__ = ["SUBMISSION_SOURCES", "write_submission"]

SUBMISSION_SOURCES = ("vqav2", "glue", "hateful_memes")


def _glue_file(task: str, split: str) -> str | None:
    """The GLUE server file name that predicts ``split`` of ``task``, or ``None`` (dev splits)."""
    from ..evaluation.submissions import GLUE_SUBMISSIONS

    for sub in GLUE_SUBMISSIONS.values():
        if sub.task == task and sub.split == split:
            return sub.name
    return None


def write_submission(dm: TaskData, rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write the official submission files of ``dm``'s source for the prediction ``rows``
    (each with ``split``, ``id``, ``prediction`` and ``scores``) into ``out_dir``, replacing
    earlier ones; returns the files written (none for a source without a format)."""
    from ..evaluation import submissions as sub

    if dm.source not in SUBMISSION_SOURCES:
        return []
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    out_dir = Path(out_dir)
    written = []
    for split, part in by_split.items():
        raw = dm._raw_dataset(split)
        if dm.source == "vqav2":
            answers = {row["id"]: row["prediction"] for row in part}
            written.append(sub.write_vqa_results(answers, raw.questions_json, out_dir, overwrite=True))
        elif dm.source == "glue":
            name = _glue_file(raw.spec.name, raw.split)
            if name is None:
                print(
                    f"flava-zoo predict: GLUE {raw.spec.name} {raw.split} is not a test split; "
                    "no server file is written for it",
                    file=sys.stderr,
                )
                continue
            # rows are named by position; the server file echoes the test file's own index
            values = {raw.ids[int(row["id"])]: row["prediction"] for row in part}
            written.append(sub.write_glue_submission(name, values, raw, out_dir, overwrite=True))
        else:
            probs = {row["id"]: (row["proba"], row["prediction"]) for row in part}
            written.append(sub.write_memes_submission(probs, raw, out_dir, overwrite=True))
    for path in written:
        print(f"flava-zoo predict: official submission file {path}", file=sys.stderr)
    return written
