"""``flava-zoo evaluate-predictions``: score a prediction file against an annotation file.

Prediction files: our predictions JSONL (``{"id", "prediction", "scores"}`` a line, what
``flava-zoo predict`` writes), or an official submission: a VQAv2 results JSON, a Hateful
Memes submission CSV or a GLUE server TSV. Annotation files, in their official formats:
VQAv2 annotations JSON (plus, optionally, its questions JSON), a labelled Hateful Memes JSONL
(``dev_seen.jsonl``), a labelled GLUE TSV (``dev.tsv``), an SNLI-VE JSONL.

Ids on both sides are compared first: annotated ids without a prediction and predicted ids
without an annotation are reported (count and first few) and, unless ``--allow-missing``, end
the run with exit status 1 before any metric; with it, the metrics cover the ids on both
sides and say so. Metrics are printed in percent: VQA accuracy (the official evaluator,
:class:`~flava_zoo.evaluation.metrics.VQAAccuracy`, overall and per answer type), the GLUE
task's official metrics, Hateful Memes AUROC and accuracy, SNLI-VE accuracy.

Ids: VQA ``question_id``; Hateful Memes ``id``; GLUE the TSV's ``index`` column (its row
position where it has none, as for CoLA's dev file); SNLI-VE the ``pairID`` when prediction ids
are strings, else the position among the labelled rows (those whose ``gold_label`` is not
``"-"``, as :class:`~flava_zoo.data.tasks.SnliVE` numbers its samples).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flava_zoo.data.tasks import (
    GLUE_TASKS,
    SNLI_VE_LABELS,
    GlueTask,
    HatefulMemes,
    TaskDataError,
    read_jsonl,
)

from . import submissions as sub
from .submissions import IdCheck, Prediction, SubmissionError, check_ids

__all__ = ["EvaluationReport", "evaluate_predictions", "main"]

TASKS = ("vqa", "glue", "memes", "snli_ve")
FORMATS = ("jsonl", "vqa_json", "memes_csv", "glue_tsv")


class UsageError(ValueError):
    """Arguments that do not fit together (exit status 2)."""


@dataclass
class EvaluationReport:
    """What :func:`evaluate_predictions` found: the ``metrics`` in percent, the id comparison
    (``ids.missing``: annotated ids without a prediction; ``ids.extra``: predicted ids without an
    annotation; ``ids.duplicates``), how many ids were scored, and notes (skipped rows, ...)."""

    task: str
    predictions: str
    prediction_format: str
    annotations: str
    ids: IdCheck
    num_scored: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        out = asdict(self)
        out["ids"] = {
            "expected": self.ids.expected, "given": self.ids.given, "matched": self.ids.matched,
            "missing": self.ids.missing, "extra": self.ids.extra, "duplicates": self.ids.duplicates,
        }  # fmt: skip
        out["unit"] = "percent"
        return out


# ------------------------------------------------------------------------ predictions
def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "vqa_json", ".csv": "memes_csv", ".tsv": "glue_tsv"}
    if suffix not in formats:
        raise UsageError(
            f"cannot tell the format of {path} from its extension: pass --format {{{','.join(FORMATS)}}}"
        )
    return formats[suffix]


def _load_predictions(path: Path, fmt: str, glue_name: str | None) -> list[tuple[Any, Any]]:
    """``(id, value)`` pairs in file order: a :class:`Prediction` for a JSONL, the answer for
    VQA results, ``(proba, label)`` for a memes CSV, the label string for a GLUE TSV."""
    if fmt == "jsonl":
        return [(p.id, p) for p in sub.read_predictions(path)]
    if fmt == "vqa_json":
        return list(sub.read_vqa_results(path))
    if fmt == "memes_csv":
        return [(i, (proba, label)) for i, proba, label in sub.read_memes_submission(path)]
    return list(sub.read_glue_submission(path, glue_name))


def _prediction_value(value: Any) -> Any:
    return value.prediction if isinstance(value, Prediction) else value


# ------------------------------------------------------------------------ annotations
def _detect_task(fmt: str, annotations: Path) -> str:
    by_format = {"vqa_json": "vqa", "memes_csv": "memes", "glue_tsv": "glue"}
    if fmt in by_format:
        return by_format[fmt]
    suffix = annotations.suffix.lower()
    if suffix == ".json":
        return "vqa"
    if suffix == ".tsv":
        return "glue"
    if suffix == ".jsonl" and annotations.is_file():
        with annotations.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = {}
        if isinstance(record, dict) and "Flickr30K_ID" in record:
            return "snli_ve"
        if isinstance(record, dict) and "img" in record:
            return "memes"
    raise UsageError(f"cannot tell the task of {annotations}: pass --task {{{','.join(TASKS)}}}")


def _vqa_annotations(path: Path) -> tuple[list[int], dict[int, list[str]], dict[int, str]]:
    data = sub._load_json(path, "VQA annotation")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SubmissionError(
            path, "expected a JSON object with an 'annotations' list", field="annotations"
        )
    ids: list[int] = []
    answers: dict[int, list[str]] = {}
    types: dict[int, str] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise SubmissionError(path, "expected an object", field=where)
        qid = ann.get("question_id")
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise SubmissionError(path, f"expected int, got {qid!r}", field=f"{where}.question_id")
        if qid in answers:
            raise SubmissionError(
                path, f"duplicate question_id {qid}", field=f"{where}.question_id"
            )
        humans = ann.get("answers")
        if not isinstance(humans, list) or not humans:
            raise SubmissionError(path, "expected a non-empty list", field=f"{where}.answers")
        texts = []
        for j, a in enumerate(humans):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise SubmissionError(
                    path, "expected an object with a string 'answer'", field=f"{where}.answers[{j}]"
                )
            texts.append(a["answer"])
        ids.append(qid)
        answers[qid] = texts
        if isinstance(ann.get("answer_type"), str):
            types[qid] = ann["answer_type"]
    if not ids:
        raise SubmissionError(path, "holds no annotations", field="annotations")
    return ids, answers, types


def _snli_ve_annotations(path: Path) -> tuple[list[str], list[int], int]:
    """pairIDs (or positions) and label indices of the labelled rows, and the number skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"SNLI-VE file {path} does not exist")
    pair_ids: list[str] = []
    labels: list[int] = []
    skipped = 0
    for number, record in read_jsonl(path):
        gold = record.get("gold_label")
        if gold == "-":
            skipped += 1
            continue
        if gold not in SNLI_VE_LABELS:
            raise SubmissionError(
                path,
                f"{gold!r} is not one of {list(SNLI_VE_LABELS)}",
                line=number,
                field="gold_label",
            )
        pair = record.get("pairID")
        pair_ids.append(
            str(pair)
            if isinstance(pair, (str, int)) and not isinstance(pair, bool)
            else f"#{len(labels)}"
        )
        labels.append(SNLI_VE_LABELS.index(gold))
    if not labels:
        raise SubmissionError(path, "holds no labelled pairs")
    return pair_ids, labels, skipped


def _pct(value: Any) -> float:
    return round(100.0 * float(value), 4)


# ---------------------------------------------------------------------------- scoring
def evaluate_predictions(
    predictions: str | Path,
    annotations: str | Path,
    *,
    task: str | None = None,
    questions: str | Path | None = None,
    glue_task: str | None = None,
    prediction_format: str | None = None,
    allow_missing: bool = False,
    threshold: float = 0.5,
) -> EvaluationReport:
    """Score ``predictions`` against ``annotations`` (see the module doc for the formats).

    ``task`` (``vqa``, ``glue``, ``memes``, ``snli_ve``) and ``prediction_format``
    (``jsonl``, ``vqa_json``, ``memes_csv``, ``glue_tsv``) are detected from the files when
    not given; ``glue_task`` (``rte``, ``mnli``, ...) from a GLUE TSV's name (``RTE.tsv``).
    With ids missing on either side, or repeated, the report has no metrics unless
    ``allow_missing`` (then the ids on both sides are scored; repeated ids are always
    refused). Bad files raise ``ValueError`` naming file, line and field."""
    pred_path, ann_path = Path(predictions), Path(annotations)
    fmt = prediction_format or _detect_format(pred_path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown prediction format {fmt!r}; choose from {FORMATS}")
    task = task or _detect_task(fmt, ann_path)
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose from {TASKS}")
    expected_format = {"vqa": "vqa_json", "memes": "memes_csv", "glue": "glue_tsv"}.get(task)
    if fmt != "jsonl" and fmt != expected_format:
        raise UsageError(f"a {fmt} prediction file cannot be scored as {task}")
    if questions is not None and task != "vqa":
        raise UsageError("--questions is for --task vqa")
    glue_name = None
    if task == "glue":
        if glue_task is None and fmt == "glue_tsv":
            try:
                glue_name = sub._glue_submission(pred_path.stem).name
            except ValueError:
                raise UsageError(
                    f"cannot tell the GLUE task of {pred_path.name}: give --glue-task"
                ) from None
            glue_task = sub.GLUE_SUBMISSIONS[glue_name].task
        if glue_task not in GLUE_TASKS:
            raise UsageError(f"give --glue-task, one of {sorted(GLUE_TASKS)} (got {glue_task!r})")
        if fmt == "glue_tsv" and glue_name is None:  # the label strings of the task's server file
            glue_name = next(s.name for s in sub.GLUE_SUBMISSIONS.values() if s.task == glue_task)
    elif glue_task is not None:
        raise UsageError("--glue-task is for --task glue")

    pairs = _load_predictions(pred_path, fmt, glue_name)
    report = EvaluationReport(task, str(pred_path), fmt, str(ann_path), IdCheck(0, 0))
    scorer = {
        "vqa": _score_vqa,
        "glue": _score_glue,
        "memes": _score_memes,
        "snli_ve": _score_snli_ve,
    }[task]
    scorer(
        report,
        pairs,
        ann_path,
        questions=questions,
        glue_task=glue_task,
        allow_missing=allow_missing,
        threshold=threshold,
    )
    return report


def _matched(
    report: EvaluationReport,
    expected: Sequence[Any],
    pairs: list[tuple[Any, Any]],
    normalise: Any,
    what: str,
    allow_missing: bool,
) -> dict[Any, Any] | None:
    """Predictions keyed by normalised id, restricted to annotated ids; ``None`` (no scoring)
    when ids are missing on either side and ``allow_missing`` is off, or are repeated."""
    keys = []
    for ident, _ in pairs:
        try:
            keys.append(normalise(ident))
        except (TypeError, ValueError) as e:
            raise SubmissionError(report.predictions, str(e), field="id") from None
    report.ids = check_ids(expected, keys, what)
    if report.ids.duplicates or (not report.ids.ok and not allow_missing):
        return None
    wanted = set(expected)
    out = {k: v for k, (_, v) in zip(keys, pairs) if k in wanted}
    if not out:
        raise SubmissionError(
            report.predictions, f"no prediction matches an annotated id of {report.annotations}"
        )
    report.num_scored = len(out)
    if not report.ids.ok:
        report.notes.append(
            f"scored the {len(out)} of {len(expected)} annotated {what} that have a prediction"
        )
    return out


def _score_vqa(
    report: EvaluationReport, pairs, ann_path: Path, *, questions, allow_missing, **_: Any
) -> None:
    from .metrics import VQAAccuracy

    ids, answers, types = _vqa_annotations(ann_path)
    if questions is not None:
        info = sub.read_vqa_questions(questions)
        known = set(info.question_ids)
        outside = [q for q in ids if q not in known]
        if outside:
            raise SubmissionError(
                ann_path,
                f"{len(outside)} annotated question ids are not in {info.path} "
                f"(first: {sub._first(outside)})",
            )
        unannotated = len(known) - len(ids)
        if unannotated:
            report.notes.append(
                f"{unannotated} questions of {info.path} have no annotation and are not scored"
            )
    matched = _matched(report, ids, pairs, sub._vqa_question_id, "question ids", allow_missing)
    if matched is None:
        return
    overall = VQAAccuracy()
    by_type: dict[str, VQAAccuracy] = {}
    for qid in ids:
        if qid not in matched:
            continue
        answer = _prediction_value(matched[qid])
        if not isinstance(answer, str):
            raise SubmissionError(
                report.predictions,
                f"the answer of question {qid} must be a string, got {answer!r}",
                field="prediction",
            )
        overall.update([answer], [answers[qid]])
        if qid in types:
            by_type.setdefault(types[qid], VQAAccuracy()).update([answer], [answers[qid]])
    report.metrics["accuracy"] = _pct(overall.compute())
    for name in sorted(by_type):
        report.metrics[f"accuracy_{name}"] = _pct(by_type[name].compute())


def _score_glue(
    report: EvaluationReport, pairs, ann_path: Path, *, glue_task: str, allow_missing, **_: Any
) -> None:
    import torch

    from .metrics import glue_metrics

    spec = GLUE_TASKS[glue_task]
    split = "dev_matched" if glue_task == "mnli" else "dev"
    dataset = GlueTask(ann_path, glue_task, split)
    if not dataset.is_labelled:
        raise SubmissionError(
            ann_path, f"has no {spec.label_column!r} labels: score against a dev file"
        )
    matched = _matched(report, dataset.ids, pairs, sub._glue_id, "rows", allow_missing)
    if matched is None:
        return
    preds, labels = [], []
    for position, index in enumerate(dataset.ids):
        if index not in matched:
            continue
        value = _prediction_value(matched[index])
        try:
            if spec.is_regression:
                score = float(value)
                if not math.isfinite(score):
                    raise ValueError(f"{value!r} is not a finite score")
                preds.append(score)
            else:
                preds.append(sub.glue_class_index(glue_task, value))
        except (TypeError, ValueError) as e:
            raise SubmissionError(
                report.predictions, f"row index {index}: {e}", field="prediction"
            ) from None
        labels.append(dataset.labels[position])
    dtype = torch.float32 if spec.is_regression else torch.long
    metrics = glue_metrics(glue_task)
    metrics.update(torch.tensor(preds, dtype=dtype), torch.tensor(labels, dtype=dtype))
    for name, value in metrics.compute().items():
        report.metrics[name] = _pct(value)


def _score_memes(
    report: EvaluationReport, pairs, ann_path: Path, *, allow_missing, threshold, **_: Any
) -> None:
    import torch

    from .metrics import binary_auroc_and_accuracy

    memes = HatefulMemes(ann_path, ann_path.parent)
    if not memes.is_labelled:
        raise SubmissionError(
            ann_path, "has no labels (a test file): score against dev_seen / dev_unseen"
        )
    ids = [sub._meme_id(i) for i in memes.ids]
    matched = _matched(report, ids, pairs, sub._meme_id, "meme ids", allow_missing)
    if matched is None:
        return
    probas, predicted, labels = [], [], []
    for meme_id, label in zip(ids, memes.labels):
        if meme_id not in matched:
            continue
        try:
            proba, guess = sub.memes_proba_label(matched[meme_id], threshold)
        except ValueError as e:
            raise SubmissionError(
                report.predictions, f"meme {meme_id}: {e}", field="prediction"
            ) from None
        probas.append(proba)
        predicted.append(guess)
        labels.append(label)
    try:
        auroc = binary_auroc_and_accuracy(torch.tensor(probas), torch.tensor(labels))["auroc"]
    except ValueError as e:
        raise SubmissionError(ann_path, f"cannot compute AUROC: {e}") from None
    report.metrics["auroc"] = _pct(auroc)
    report.metrics["accuracy"] = _pct(sum(p == t for p, t in zip(predicted, labels)) / len(labels))


def _score_snli_ve(
    report: EvaluationReport, pairs, ann_path: Path, *, allow_missing, **_: Any
) -> None:
    pair_ids, labels, skipped = _snli_ve_annotations(ann_path)
    if skipped:
        report.notes.append(f"{skipped} pairs without a gold label ('-') are not scored")
    by_position = all(isinstance(i, int) and not isinstance(i, bool) for i, _ in pairs)
    expected: list[Any] = list(range(len(labels))) if by_position else pair_ids

    def normalise(ident: Any) -> Any:
        if by_position:
            return int(ident)
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            raise ValueError(f"a pair id is a string, not {ident!r}")
        return str(ident)

    matched = _matched(
        report,
        expected,
        pairs,
        normalise,
        "pair positions" if by_position else "pairIDs",
        allow_missing,
    )
    if matched is None:
        return
    correct = 0
    for key, label in zip(expected, labels):
        if key not in matched:
            continue
        value = _prediction_value(matched[key])
        if isinstance(value, str) and value in SNLI_VE_LABELS:
            value = SNLI_VE_LABELS.index(value)
        if isinstance(value, bool) or value not in range(len(SNLI_VE_LABELS)):
            raise SubmissionError(
                report.predictions,
                f"pair {key!r}: {value!r} is not a class index in 0..2 or "
                f"one of {list(SNLI_VE_LABELS)}",
                field="prediction",
            )
        correct += int(value) == label
    report.metrics["accuracy"] = _pct(correct / report.num_scored)


# -------------------------------------------------------------------------------- CLI
def _print_report(report: EvaluationReport, allow_missing: bool) -> None:
    print(
        f"evaluate-predictions: {report.task}: {report.predictions} ({report.prediction_format}, "
        f"{report.ids.given} entries) against {report.annotations} ({report.ids.expected} {report.ids.what})"
    )
    for problem in report.ids.problems("the annotations", "the predictions"):
        print(f"  {problem}")
    for note in report.notes:
        print(f"  note: {note}")
    if report.metrics:
        print(f"  scored {report.num_scored} {report.ids.what}")
        width = max(len(k) for k in report.metrics)
        for name, value in report.metrics.items():
            print(f"  {name:<{width}}  {value:7.2f} %")


def main(argv: Sequence[str] | None = None) -> int:
    """``flava-zoo evaluate-predictions``: exit 0 with the metrics, 1 when ids are missing on
    either side (unless ``--allow-missing``), repeated, or a file breaks its format, 2 on bad
    usage (unknown task, files that do not exist)."""
    parser = argparse.ArgumentParser(
        prog="flava-zoo evaluate-predictions",
        description="Score a prediction file (predictions JSONL, VQAv2 results JSON, Hateful Memes CSV, "
        "GLUE TSV) against an annotation file, reporting ids missing on either side.",
    )
    parser.add_argument("predictions", help="predictions JSONL or an official submission file")
    parser.add_argument(
        "annotations",
        help="VQAv2 annotations JSON, labelled memes JSONL, GLUE dev TSV or SNLI-VE JSONL",
    )
    parser.add_argument("--task", choices=TASKS, help="default: from the files")
    parser.add_argument(
        "--format", dest="prediction_format", choices=FORMATS, help="default: from the extension"
    )
    parser.add_argument(
        "--questions", help="VQAv2 questions JSON, to check the annotations against it"
    )
    parser.add_argument(
        "--glue-task", choices=sorted(GLUE_TASKS), help="default: from a GLUE TSV's name"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="memes: proba threshold for a missing label"
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="score the ids present on both sides"
    )
    parser.add_argument(
        "--json", dest="json_out", help="also write the report as JSON to this file"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    for path in (args.predictions, args.annotations, args.questions):
        if path is not None and not Path(path).is_file():
            print(f"flava-zoo evaluate-predictions: {path} does not exist", file=sys.stderr)
            return 2
    try:
        report = evaluate_predictions(
            args.predictions, args.annotations, task=args.task, questions=args.questions,
            glue_task=args.glue_task, prediction_format=args.prediction_format,
            allow_missing=args.allow_missing, threshold=args.threshold,
        )  # fmt: skip
    except UsageError as e:
        print(f"flava-zoo evaluate-predictions: {e}", file=sys.stderr)
        return 2
    except (TaskDataError, ValueError, FileNotFoundError) as e:
        print(f"flava-zoo evaluate-predictions: {e}", file=sys.stderr)
        return 1
    _print_report(report, args.allow_missing)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.metrics:
        reason = "repeated ids" if report.ids.duplicates else "ids missing on either side"
        hint = "" if report.ids.duplicates else " (--allow-missing scores the ids on both sides)"
        print(f"flava-zoo evaluate-predictions: not scored: {reason}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
