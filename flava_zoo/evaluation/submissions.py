"""Official submission files: write them, and check them by their formats' rules.

- **VQAv2** results JSON (visualqa.org "Results Format"; read back by ``loadRes`` of the
  official ``vqa.py``): a JSON list ``[{"question_id": int, "answer": str}, ...]`` holding
  every question id of the question file exactly once (``loadRes`` asserts that the set of
  result ids equals the set of the file's ids). The file is named as the official tools name
  results, ``vqa_<task>_<dataset>_<split>_<alg>_results.json``, e.g.
  ``vqa_OpenEnded_mscoco_test-dev2015_flava-zoo_results.json``.
- **GLUE** server files: a folder of one TSV per task, named ``CoLA.tsv``, ``SST-2.tsv``,
  ``MRPC.tsv``, ``STS-B.tsv``, ``QQP.tsv``, ``MNLI-m.tsv``, ``MNLI-mm.tsv``, ``QNLI.tsv``,
  ``RTE.tsv``, ``WNLI.tsv`` and ``AX.tsv`` (the diagnostic set, predicted with the MNLI
  model), each with the header ``index<TAB>prediction`` and one row per test row, in the
  test file's order, echoing its ``index``. Labels are the server's strings: ``0`` / ``1``
  for CoLA, SST-2, MRPC, QQP and WNLI (the files' own label values), ``entailment`` /
  ``neutral`` / ``contradiction`` for MNLI and AX, ``entailment`` / ``not_entailment`` for
  QNLI and RTE, and the STS-B similarity as a float in [0, 5]. The official test sets have
  :data:`GLUE_TEST_ROWS` rows; files are checked against the test TSV actually given.
- **Hateful Memes** (the challenge's submission CSV): header ``id,proba,label``, one row per
  meme of the test JSONL (``test_seen.jsonl`` / ``test_unseen.jsonl``), ``proba`` the
  probability of *hateful* in [0, 1], ``label`` 0 or 1.
- **Predictions JSONL** (what ``flava-zoo predict`` writes): one JSON object a line,
  ``{"id": ..., "prediction": ..., "scores": ...}``; :func:`read_predictions` reads it.

Every writer refuses a prediction set with duplicate, missing or extra ids, naming the count
and the first few (:class:`IdCheck`); every reader names the file, line and field of a
problem (:class:`SubmissionError`). Writers refuse to overwrite an existing file unless
``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flava_zoo.data.tasks import GLUE_TASKS, GlueTask, GlueTaskSpec, HatefulMemes, TaskDataError

__all__ = [
    "GLUE_SUBMISSIONS",
    "GLUE_TEST_ROWS",
    "GlueSubmissionSpec",
    "IdCheck",
    "Prediction",
    "SubmissionError",
    "VQAQuestionFile",
    "check_ids",
    "glue_class_index",
    "glue_server_label",
    "memes_proba_label",
    "read_glue_submission",
    "read_glue_test",
    "read_memes_submission",
    "read_predictions",
    "read_vqa_questions",
    "read_vqa_results",
    "validate_glue_submission",
    "validate_glue_submission_dir",
    "validate_memes_submission",
    "validate_vqa_results",
    "vqa_results_filename",
    "write_glue_submission",
    "write_memes_submission",
    "write_predictions",
    "write_vqa_results",
]

SHOWN = 5
"""How many ids a message quotes."""


class SubmissionError(TaskDataError):
    """A submission or prediction file (or prediction set) that breaks its format's rules;
    the message names the file, and the line and field where there is one."""


# ----------------------------------------------------------------------------- id checks
def _first(ids: Sequence[Any], shown: int = SHOWN) -> str:
    listed = ", ".join(repr(i) if isinstance(i, str) else str(i) for i in ids[:shown])
    return f"{listed}, ..." if len(ids) > shown else listed


@dataclass(frozen=True)
class IdCheck:
    """How a set of given ids compares with the expected ones.

    ``missing``: expected ids with no entry (in expected order); ``extra``: given ids that are
    not expected (in given order); ``duplicates``: ids given more than once. ``what`` names
    the ids in messages (``question ids``, ``meme ids``, ``rows``).
    """

    expected: int
    given: int
    missing: list[Any] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)
    duplicates: list[Any] = field(default_factory=list)
    what: str = "ids"

    @property
    def ok(self) -> bool:
        """No id missing, extra or repeated."""
        return not (self.missing or self.extra or self.duplicates)

    @property
    def matched(self) -> int:
        """Expected ids that have an entry."""
        return self.expected - len(self.missing)

    def problems(
        self, expected_name: str = "the reference", given_name: str = "the predictions"
    ) -> list[str]:
        """One sentence per kind of mismatch, with the count and the first few ids."""
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} of the {self.expected} {self.what} of {expected_name} "
                f"have no entry in {given_name} (first: {_first(self.missing)})"
            )
        if self.extra:
            out.append(
                f"{len(self.extra)} {self.what} of {given_name} are not in {expected_name} "
                f"(first: {_first(self.extra)})"
            )
        if self.duplicates:
            out.append(
                f"{len(self.duplicates)} {self.what} appear more than once in {given_name} "
                f"(first: {_first(self.duplicates)})"
            )
        return out


def check_ids(expected: Sequence[Any], given: Sequence[Any], what: str = "ids") -> IdCheck:
    """Compare ``given`` ids (a submission's, in its order) with ``expected`` (a reference's):
    every expected id once, nothing else."""
    expected_set = set(expected)
    counts = Counter(given)
    seen: set[Any] = set()
    extra: list[Any] = []
    duplicates: list[Any] = []
    for i in given:
        if i not in expected_set and i not in seen:
            extra.append(i)
        if counts[i] > 1 and i not in seen:
            duplicates.append(i)
        seen.add(i)
    missing = [i for i in expected if i not in counts]
    return IdCheck(len(expected), len(given), missing, extra, duplicates, what)


def _refuse(check: IdCheck, path: Path | str, expected_name: str, given_name: str) -> None:
    if not check.ok:
        raise SubmissionError(path, "; ".join(check.problems(expected_name, given_name)))


# ------------------------------------------------------------------------ predictions
@dataclass(frozen=True)
class Prediction:
    """One line of a predictions JSONL: ``id``, ``prediction``, optional ``scores``, the other
    fields of the line (``extra``) and its ``line`` number."""

    id: int | str
    prediction: Any
    scores: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read a predictions JSONL: one object a line with ``id`` (an int or a string),
    ``prediction`` (any JSON value but null) and optional ``scores`` (a number, a list of
    numbers, an object of numbers by label, as ``flava-zoo predict`` writes, or null); other
    fields (``proba``, ``split``) are kept in :attr:`Prediction.extra`. Blank lines are skipped. A bad line raises :class:`SubmissionError`
    (a ``ValueError``) naming the file, the line and the field; a file without predictions is
    refused. Ids are not checked for uniqueness here (the writers and the evaluator do)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    out: list[Prediction] = []
    with path.open(encoding="utf-8-sig") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SubmissionError(
                    path, f"not valid JSON ({e.msg}, column {e.colno})", line=number
                ) from e
            if not isinstance(record, dict):
                raise SubmissionError(
                    path, f"expected a JSON object, got {type(record).__name__}", line=number
                )
            for key in ("id", "prediction"):
                if key not in record:
                    raise SubmissionError(path, "missing", line=number, field=key)
            ident = record["id"]
            if isinstance(ident, bool) or not isinstance(ident, (int, str)) or ident == "":
                raise SubmissionError(
                    path,
                    f"expected an int or a non-empty string, got {ident!r}",
                    line=number,
                    field="id",
                )
            if record["prediction"] is None:
                raise SubmissionError(path, "is null", line=number, field="prediction")
            scores = record.get("scores")
            if (
                scores is not None
                and not _is_number(scores)
                and not (isinstance(scores, list) and all(_is_number(s) for s in scores))
                and not (isinstance(scores, dict) and all(_is_number(s) for s in scores.values()))
            ):
                raise SubmissionError(
                    path,
                    f"expected a number, a list of numbers or an object of numbers, got {scores!r}",
                    line=number,
                    field="scores",
                )
            extra = {k: v for k, v in record.items() if k not in ("id", "prediction", "scores")}
            out.append(Prediction(ident, record["prediction"], scores, extra, number))
    if not out:
        raise SubmissionError(path, "holds no predictions")
    return out


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return value.tolist()
    return value


def write_predictions(
    path: str | os.PathLike,
    records: Iterable[Prediction | Mapping[str, Any]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``records`` (:class:`Prediction` objects or dicts with ``id``, ``prediction``
    and optional ``scores``; tensors become lists) as a predictions JSONL that
    :func:`read_predictions` reads back. Refuses an existing file unless ``overwrite``."""
    path = Path(path)
    lines = []
    for i, record in enumerate(records):
        if isinstance(record, Prediction):
            item = {"id": record.id, "prediction": record.prediction, **dict(record.extra)}
            if record.scores is not None:
                item["scores"] = record.scores
        else:
            item = dict(record)
        if "id" not in item or "prediction" not in item:
            raise ValueError(f"prediction {i} lacks 'id' or 'prediction': {sorted(item)}")
        lines.append(json.dumps({k: _json_value(v) for k, v in item.items()}) + "\n")
    return _write_text(path, "".join(lines), overwrite)


def _write_text(path: Path, text: str, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: refusing to overwrite it (pass overwrite / --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


PredictionsLike = (
    Mapping[Any, Any]
    | Iterable[Prediction]
    | Iterable[tuple[Any, Any]]
    | Iterable[Mapping[str, Any]]
)
"""Predictions a writer takes: ``{id: value}``, :class:`Prediction` records (from
:func:`read_predictions`), ``(id, value)`` pairs, or dicts with ``id`` and ``prediction``."""


def _entries(predictions: PredictionsLike) -> list[tuple[Any, Any, str]]:
    """``(id, value, where)``: ``value`` a :class:`Prediction` for records, else the value."""
    if isinstance(predictions, Mapping):
        return [(k, v, f"id {k!r}") for k, v in predictions.items()]
    out = []
    for i, item in enumerate(predictions):
        if isinstance(item, Prediction):
            out.append((item.id, item, f"line {item.line}" if item.line else f"prediction {i}"))
        elif isinstance(item, Mapping):
            if "id" not in item or "prediction" not in item:
                raise ValueError(f"prediction {i} lacks 'id' or 'prediction': {sorted(item)}")
            record = Prediction(
                item["id"],
                item["prediction"],
                item.get("scores"),
                {k: v for k, v in item.items() if k not in ("id", "prediction", "scores")},
            )
            out.append((record.id, record, f"prediction {i}"))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((item[0], item[1], f"prediction {i}"))
        else:
            raise TypeError(
                f"prediction {i}: expected a Prediction, a dict with id / prediction or an (id, value) "
                f"pair, got {type(item).__name__}"
            )
    return out


def _value(entry: Any) -> Any:
    return entry.prediction if isinstance(entry, Prediction) else entry


def _keyed(
    entries: list[tuple[Any, Any, str]],
    normalise: Callable[[Any], Any],
    expected: Sequence[Any],
    source: str,
    reference: str,
    what: str,
) -> dict[Any, tuple[Any, str]]:
    """Entries keyed by normalised id, refusing duplicate, missing and extra ids."""
    keys = []
    for ident, _, where in entries:
        try:
            keys.append(normalise(ident))
        except (TypeError, ValueError) as e:
            raise SubmissionError(source, f"{where}: {e}", field="id") from None
    _refuse(check_ids(expected, keys, what), source, reference, "the predictions")
    return {k: (value, where) for k, (_, value, where) in zip(keys, entries)}


# --------------------------------------------------------------------------------- VQAv2
@dataclass(frozen=True)
class VQAQuestionFile:
    """An official VQA question file: its ``task_type``, ``data_type`` and ``data_subtype``
    (``Open-Ended``, ``mscoco``, ``test2015`` in ``v2_OpenEnded_mscoco_test2015_questions.json``)
    and its question ids in file order."""

    path: Path
    task_type: str | None
    data_type: str | None
    data_subtype: str | None
    question_ids: list[int]


def _vqa_question_id(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"a question id is an int, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"a question id is an int, not {value!r}")


def _load_json(path: Path, what: str) -> Any:
    """The JSON of ``path`` through the task readers' reader (errors name file, line, byte)."""
    from flava_zoo.data.tasks import _read_json, _require_file

    return _read_json(_require_file(path, what))


def read_vqa_questions(path: str | os.PathLike) -> VQAQuestionFile:
    """Read an official VQA question file (``{"task_type", "data_type", "data_subtype",
    "questions": [{"question_id", "image_id", "question"}], ...}``); a question id that is not
    an int, or appears twice, is refused naming the entry."""
    path = Path(path)
    data = _load_json(path, "VQA question")
    if not isinstance(data, Mapping) or not isinstance(data.get("questions"), list):
        raise SubmissionError(
            path, "expected a JSON object with a 'questions' list", field="questions"
        )
    ids: list[int] = []
    seen: set[int] = set()
    for i, q in enumerate(data["questions"]):
        if not isinstance(q, Mapping) or "question_id" not in q:
            raise SubmissionError(
                path, "expected an object with 'question_id'", field=f"questions[{i}]"
            )
        qid = q["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise SubmissionError(
                path, f"expected int, got {qid!r}", field=f"questions[{i}].question_id"
            )
        if qid in seen:
            raise SubmissionError(
                path, f"duplicate question_id {qid}", field=f"questions[{i}].question_id"
            )
        seen.add(qid)
        ids.append(qid)
    if not ids:
        raise SubmissionError(path, "holds no questions", field="questions")

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    return VQAQuestionFile(path, text("task_type"), text("data_type"), text("data_subtype"), ids)


_VQA_FILE_NAME = re.compile(
    r"^(?:v2_)?(?P<task>OpenEnded|MultipleChoice)_(?P<data>mscoco|abstract_v002)_(?P<split>.+)_questions\.json$"
)


def vqa_results_filename(
    questions: VQAQuestionFile | str | os.PathLike, alg_name: str = "flava-zoo"
) -> str:
    """The official name of a results file for ``questions``:
    ``vqa_<task>_<dataset>_<split>_<alg_name>_results.json`` (``vqa_OpenEnded_mscoco_test2015_
    flava-zoo_results.json``), from the question file's ``task_type`` (``Open-Ended`` ->
    ``OpenEnded``), ``data_type`` and ``data_subtype``, else from its file name.
    ``alg_name`` may not hold ``_`` (the fields are underscore separated), ``/`` or spaces."""
    if not alg_name or re.search(r"[_/\\\s]", alg_name):
        raise ValueError(
            f"alg_name {alg_name!r} must be non-empty without '_', '/' or spaces (the results "
            "file name's fields are separated by '_')"
        )
    info = questions if isinstance(questions, VQAQuestionFile) else read_vqa_questions(questions)
    task = re.sub(r"[\s-]", "", info.task_type) if info.task_type else None
    data, split = info.data_type, info.data_subtype
    if not (task and data and split):
        match = _VQA_FILE_NAME.match(info.path.name)
        if match is None:
            raise ValueError(
                f"{info.path}: no task_type / data_type / data_subtype fields and a file name unlike "
                "v2_OpenEnded_mscoco_test2015_questions.json: give the results file name"
            )
        task, data, split = task or match["task"], data or match["data"], split or match["split"]
    return f"vqa_{task}_{data}_{split}_{alg_name}_results.json"


def write_vqa_results(
    predictions: PredictionsLike,
    questions_json: str | os.PathLike,
    out: str | os.PathLike,
    *,
    alg_name: str = "flava-zoo",
    overwrite: bool = False,
) -> Path:
    """Write the VQAv2 results JSON of ``predictions`` (question id -> answer string; see
    :data:`PredictionsLike`) for the questions of ``questions_json``.

    Every question id of the file must have exactly one prediction and nothing else, as the
    official ``loadRes`` requires; otherwise :class:`SubmissionError` names the missing, extra
    and repeated ids (count and first few). Answers must be strings (the evaluator normalises
    them). Entries follow the question file's order. ``out``: a ``.json`` file, or a folder
    that receives :func:`vqa_results_filename`. Returns the file written.
    """
    info = read_vqa_questions(questions_json)
    entries = _entries(predictions)
    keyed = _keyed(
        entries,
        _vqa_question_id,
        info.question_ids,
        "VQA predictions",
        str(info.path),
        "question ids",
    )
    results = []
    empty = 0
    for qid in info.question_ids:
        value, where = keyed[qid]
        answer = _value(value)
        if not isinstance(answer, str):
            raise SubmissionError(
                "VQA predictions",
                f"{where}: the answer of question {qid} must be a string, got {answer!r}",
                field="prediction",
            )
        empty += not answer.strip()
        results.append({"question_id": qid, "answer": answer})
    if empty:
        warnings.warn(
            f"{empty} of {len(results)} VQA answers are empty strings (they score 0)", stacklevel=2
        )
    out = Path(out)
    path = (
        out
        if out.suffix == ".json" and not out.is_dir()
        else out / vqa_results_filename(info, alg_name)
    )
    return _write_text(path, json.dumps(results), overwrite)


def read_vqa_results(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Read a VQA results JSON (a list of ``{"question_id": int, "answer": str}``) as
    ``(question_id, answer)`` pairs in file order; a malformed entry is refused naming it.
    Duplicates are kept (``validate_vqa_results`` and the evaluator report them)."""
    path = Path(path)
    data = _load_json(path, "VQA results")
    if not isinstance(data, list):
        raise SubmissionError(
            path, f"results must be a JSON list of objects, got {type(data).__name__}"
        )
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise SubmissionError(
                path, f"expected an object, got {type(entry).__name__}", field=f"[{i}]"
            )
        for key, kind in (("question_id", int), ("answer", str)):
            if key not in entry:
                raise SubmissionError(path, "missing", field=f"[{i}].{key}")
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise SubmissionError(
                    path, f"expected {kind.__name__}, got {value!r}", field=f"[{i}].{key}"
                )
        out.append((entry["question_id"], entry["answer"]))
    if not out:
        raise SubmissionError(path, "holds no results")
    return out


def validate_vqa_results(
    results_json: str | os.PathLike, questions_json: str | os.PathLike
) -> IdCheck:
    """Check a VQA results file against its question file: the format, and every question id
    exactly once and no other. Returns the :class:`IdCheck`; raises :class:`SubmissionError`
    naming the problems when it fails."""
    info = read_vqa_questions(questions_json)
    results = read_vqa_results(results_json)
    check = check_ids(info.question_ids, [qid for qid, _ in results], "question ids")
    _refuse(check, results_json, str(info.path), "the results")
    return check


# ---------------------------------------------------------------------------------- GLUE
@dataclass(frozen=True)
class GlueSubmissionSpec:
    """One file of a GLUE server submission: its ``name`` (``MNLI-m``; the file is
    ``MNLI-m.tsv``), the task of :data:`~flava_zoo.data.tasks.GLUE_TASKS` and the
    :class:`~flava_zoo.data.tasks.GlueTask` split it predicts, and the official test rows."""

    name: str
    task: str
    split: str
    test_rows: int

    @property
    def filename(self) -> str:
        """The file name the server expects."""
        return f"{self.name}.tsv"

    @property
    def spec(self) -> GlueTaskSpec:
        """The task's definition."""
        return GLUE_TASKS[self.task]

    @property
    def labels(self) -> tuple[str, ...]:
        """The label strings the server accepts (empty for the STS-B score)."""
        spec = self.spec
        if spec.label_kind == "index":
            return tuple(str(i) for i in range(spec.num_labels))
        return spec.label_names if spec.label_kind == "name" else ()


GLUE_TEST_ROWS: dict[str, int] = {
    "CoLA": 1063, "SST-2": 1821, "MRPC": 1725, "STS-B": 1379, "QQP": 390965, "MNLI-m": 9796,
    "MNLI-mm": 9847, "QNLI": 5463, "RTE": 3000, "WNLI": 146, "AX": 1104,
}  # fmt: skip
"""Rows of the official test sets (the ``test`` splits of the GLUE distribution)."""

GLUE_SUBMISSIONS: dict[str, GlueSubmissionSpec] = {
    s.name: s
    for s in (
        GlueSubmissionSpec("CoLA", "cola", "test", GLUE_TEST_ROWS["CoLA"]),
        GlueSubmissionSpec("SST-2", "sst2", "test", GLUE_TEST_ROWS["SST-2"]),
        GlueSubmissionSpec("MRPC", "mrpc", "test", GLUE_TEST_ROWS["MRPC"]),
        GlueSubmissionSpec("STS-B", "stsb", "test", GLUE_TEST_ROWS["STS-B"]),
        GlueSubmissionSpec("QQP", "qqp", "test", GLUE_TEST_ROWS["QQP"]),
        GlueSubmissionSpec("MNLI-m", "mnli", "test_matched", GLUE_TEST_ROWS["MNLI-m"]),
        GlueSubmissionSpec("MNLI-mm", "mnli", "test_mismatched", GLUE_TEST_ROWS["MNLI-mm"]),
        GlueSubmissionSpec("QNLI", "qnli", "test", GLUE_TEST_ROWS["QNLI"]),
        GlueSubmissionSpec("RTE", "rte", "test", GLUE_TEST_ROWS["RTE"]),
        GlueSubmissionSpec("WNLI", "wnli", "test", GLUE_TEST_ROWS["WNLI"]),
        GlueSubmissionSpec("AX", "mnli", "diagnostic", GLUE_TEST_ROWS["AX"]),
    )
}
"""The eleven files of a GLUE server submission, by name."""

_GLUE_ALIASES = {
    **{name.lower(): name for name in GLUE_SUBMISSIONS},
    "sst2": "SST-2", "stsb": "STS-B", "mnli": "MNLI-m", "mnli_matched": "MNLI-m",
    "mnli_mismatched": "MNLI-mm", "mnli-m": "MNLI-m", "mnli-mm": "MNLI-mm", "ax": "AX",
    "diagnostic": "AX",
}  # fmt: skip


def _glue_submission(name: str) -> GlueSubmissionSpec:
    key = _GLUE_ALIASES.get(str(name).lower().removesuffix(".tsv"))
    if key is None:
        raise ValueError(
            f"unknown GLUE submission {name!r}; expected one of {list(GLUE_SUBMISSIONS)}"
        )
    return GLUE_SUBMISSIONS[key]


def glue_server_label(name: str, prediction: Any) -> str:
    """The server's label string for one prediction of GLUE file ``name`` (``RTE``, ``MNLI-m``,
    ``sst2``, ...): a class index (into the task's ``label_names``), a label name
    (``"entailment"``, ``"acceptable"``) or the server string itself; for STS-B a number in
    [0, 5], written with three decimals. Anything else raises ``ValueError``."""
    sub = _glue_submission(name)
    spec = sub.spec
    if isinstance(prediction, bool):
        raise ValueError(f"{sub.name}: {prediction!r} is not a label")
    if spec.is_regression:
        try:
            score = float(prediction)
        except (TypeError, ValueError):
            raise ValueError(f"{sub.name}: {prediction!r} is not a similarity score") from None
        if not 0.0 <= score <= 5.0:  # also refuses NaN
            raise ValueError(f"{sub.name}: {prediction!r} is not a similarity score in [0, 5]")
        return f"{score:.3f}"
    try:
        return sub.labels[glue_class_index(spec.name, prediction)]
    except ValueError as e:
        raise ValueError(f"{sub.name}: {str(e).split(': ', 1)[1]}") from None


def glue_class_index(task: str, prediction: Any) -> int:
    """The class index (into ``GLUE_TASKS[task].label_names``) of a prediction given as an
    index, a label name or a server label string (``"0"``, ``"entailment"``). ``task`` is a
    :data:`GLUE_TASKS` name or a submission name (``MNLI-m``)."""
    spec = GLUE_TASKS[task] if task in GLUE_TASKS else _glue_submission(task).spec
    n = spec.num_labels
    if isinstance(prediction, bool):
        raise ValueError(f"GLUE {spec.name}: {prediction!r} is not a label")
    if isinstance(prediction, float) and prediction.is_integer():
        prediction = int(prediction)
    if isinstance(prediction, int):
        if 0 <= prediction < n:
            return prediction
    elif isinstance(prediction, str):
        text = prediction.strip()
        if text in spec.label_names:
            return spec.label_names.index(text)
        if text.isdigit() and int(text) < n:
            return int(text)
    raise ValueError(
        f"GLUE {spec.name}: {prediction!r} is not a class index in 0..{n - 1} or one of "
        f"{list(spec.label_names)}"
    )


def read_glue_test(name: str, root_or_file: str | os.PathLike) -> GlueTask:
    """The label-less test split of GLUE file ``name`` (``test.tsv``; MNLI's
    ``test_matched.tsv`` / ``test_mismatched.tsv``; AX's ``diagnostic/diagnostic.tsv``) from the
    GLUE root, the task folder or the file itself."""
    sub = _glue_submission(name)
    return GlueTask(root_or_file, sub.task, sub.split)


def _glue_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a GLUE row index is an int or a string, not {value!r}")
    return str(value).strip()


def write_glue_submission(
    name: str,
    predictions: PredictionsLike,
    test: GlueTask | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    clip_scores: bool = True,
) -> Path:
    """Write ``out_dir / "<name>.tsv"`` for the GLUE server: header ``index<TAB>prediction``,
    one row per row of the test file (``test``: a :class:`GlueTask` or what
    :func:`read_glue_test` takes), in its order, echoing its ``index``.

    ``predictions`` map the test file's ``index`` values (``GlueTask.ids``; in the official
    files they equal the row positions, ``sample["index"]``) to a class index, a label name or
    (STS-B) a score; see :data:`PredictionsLike`. Missing, extra and repeated indices are
    refused, naming them. STS-B scores outside [0, 5] are clipped (``clip_scores``, counted in a
    warning) or refused. A test file whose row count differs from the official test set's
    (:data:`GLUE_TEST_ROWS`) is written with a warning naming both counts.
    """
    sub = _glue_submission(name)
    dataset = test if isinstance(test, GlueTask) else read_glue_test(sub.name, test)
    if dataset.spec.name != sub.task:
        raise ValueError(
            f"{sub.name}.tsv predicts GLUE {sub.task}, but the test file is {dataset.spec.name}"
        )
    keyed = _keyed(
        _entries(predictions),
        _glue_id,
        dataset.ids,
        f"GLUE {sub.name} predictions",
        str(dataset.path),
        "rows",
    )
    rows = ["index\tprediction\n"]
    clipped = 0
    for index in dataset.ids:
        value, where = keyed[index]
        value = _value(value)
        if sub.spec.is_regression and clip_scores and _is_number(value) and math.isfinite(value):
            clipped += not 0.0 <= value <= 5.0
            value = min(max(float(value), 0.0), 5.0)
        try:
            label = glue_server_label(sub.name, value)
        except ValueError as e:
            raise SubmissionError(
                f"GLUE {sub.name} predictions",
                f"{where} (row index {index}): {e}",
                field="prediction",
            ) from None
        rows.append(f"{index}\t{label}\n")
    if clipped:
        warnings.warn(f"{sub.name}: clipped {clipped} similarity scores into [0, 5]", stacklevel=2)
    _warn_row_count(sub, len(dataset), dataset.path)
    return _write_text(Path(out_dir) / sub.filename, "".join(rows), overwrite)


def _warn_row_count(sub: GlueSubmissionSpec, rows: int, path: Path) -> None:
    if rows != sub.test_rows:
        warnings.warn(
            f"{sub.filename}: {rows} rows, from {path}; the official {sub.name} test set has "
            f"{sub.test_rows} rows (the GLUE server scores the full test set)",
            stacklevel=3,
        )


def read_glue_submission(path: str | os.PathLike, name: str | None = None) -> list[tuple[str, str]]:
    """Read a GLUE server file as ``(index, label)`` pairs in file order, checking the header
    (``index<TAB>prediction``), two fields a row and the label strings of file ``name``
    (default: from the file name, ``RTE.tsv`` -> ``RTE``). A bad row is refused naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE submission file {path} does not exist")
    sub = _glue_submission(name or path.stem)
    out = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != ["index", "prediction"]:
        raise SubmissionError(
            path,
            f"the header must be 'index<TAB>prediction', got {lines[0] if lines else ''!r}",
            line=1,
        )
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise SubmissionError(
                path, f"expected 2 tab-separated fields, found {len(fields)}", line=number
            )
        index, label = fields[0].strip(), fields[1].strip()
        if not index:
            raise SubmissionError(path, "empty", line=number, field="index")
        if sub.labels and label not in sub.labels:
            raise SubmissionError(
                path, f"{label!r} is not one of {list(sub.labels)}", line=number, field="prediction"
            )
        if not sub.labels:
            try:
                glue_server_label(sub.name, label)
            except ValueError as e:
                raise SubmissionError(path, str(e), line=number, field="prediction") from None
        out.append((index, label))
    if not out:
        raise SubmissionError(path, "holds no rows")
    return out


def validate_glue_submission(
    path: str | os.PathLike, test: GlueTask | str | os.PathLike, name: str | None = None
) -> IdCheck:
    """Check a GLUE server file against its test file: the header, label strings, every test
    index once in the test file's order and nothing else. Returns the :class:`IdCheck`
    (warning when the row count differs from the official one); raises
    :class:`SubmissionError` naming the problems."""
    path = Path(path)
    sub = _glue_submission(name or path.stem)
    rows = read_glue_submission(path, sub.name)
    dataset = test if isinstance(test, GlueTask) else read_glue_test(sub.name, test)
    given = [index for index, _ in rows]
    check = check_ids(dataset.ids, given, "rows")
    _refuse(check, path, str(dataset.path), "the submission")
    if given != list(dataset.ids):
        first = next(i for i, (a, b) in enumerate(zip(given, dataset.ids)) if a != b)
        raise SubmissionError(
            path,
            f"rows are not in the test file's order: row {first + 1} has index "
            f"{given[first]!r}, the test file {dataset.ids[first]!r}",
            line=first + 2,
        )
    _warn_row_count(sub, len(rows), dataset.path)
    return check


def validate_glue_submission_dir(
    out_dir: str | os.PathLike, glue_root: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, IdCheck]:
    """Check a whole GLUE submission folder against the GLUE root: each of ``names`` (default
    all eleven) must be there and valid. Raises :class:`SubmissionError` listing the missing
    files, or the first invalid one's problems."""
    out_dir = Path(out_dir)
    subs = [_glue_submission(n) for n in (names or GLUE_SUBMISSIONS)]
    missing = [s.filename for s in subs if not (out_dir / s.filename).is_file()]
    if missing:
        raise SubmissionError(
            out_dir,
            f"{len(missing)} of the {len(subs)} GLUE files are missing: {', '.join(missing)}",
        )
    return {s.name: validate_glue_submission(out_dir / s.filename, glue_root, s.name) for s in subs}


# ------------------------------------------------------------------------- Hateful Memes
def _meme_id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a meme id is an int or a string, not {value!r}")
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def memes_proba_label(value: Any, threshold: float = 0.5) -> tuple[float, int]:
    """``(proba, label)`` of one Hateful Memes prediction.

    ``value``: a probability of *hateful*; a ``(proba, label)`` pair; or a :class:`Prediction`,
    whose probability is its ``proba`` field, else its ``scores`` (a number; two class
    probabilities, or two logits, which are softmaxed; or scores by label, ``hateful`` or
    ``1`` being the probability), and whose label is its ``prediction``
    (0 / 1, ``"hateful"`` / ``"not_hateful"``), else ``proba >= threshold``.
    """
    label: Any = None
    if isinstance(value, Prediction):
        proba = value.extra.get("proba", value.scores)
        label = value.prediction
        if proba is None and _is_number(label) and not float(label).is_integer():
            proba, label = label, None  # a bare probability given as the prediction
        if isinstance(proba, dict):  # per-label scores, as flava-zoo predict writes them
            key = next((k for k in ("hateful", "1") if k in proba), None)
            if key is None:
                raise ValueError(f"scores {proba!r} name neither 'hateful' nor '1'")
            proba = proba[key]
        if isinstance(proba, list):
            if len(proba) != 2:
                raise ValueError(f"expected 2 class scores, got {len(proba)}")
            a, b = (float(x) for x in proba)
            if min(a, b) >= 0 and abs(a + b - 1.0) <= 1e-4:
                proba = b
            else:
                proba = 1.0 / (1.0 + math.exp(a - b))
        if proba is None:
            raise ValueError("no probability: give 'scores' or 'proba'")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        proba, label = value
    else:
        proba = value
    if not _is_number(proba) or not 0.0 <= float(proba) <= 1.0:
        raise ValueError(f"proba {proba!r} is not a probability in [0, 1]")
    proba = float(proba)
    if label is None:
        return proba, int(proba >= threshold)
    if isinstance(label, str) and label in HatefulMemes.label_names:
        return proba, HatefulMemes.label_names.index(label)
    if isinstance(label, bool) or label not in (0, 1, "0", "1"):
        raise ValueError(f"label {label!r} is not 0 or 1")
    return proba, int(label)


def _memes_reference(test: HatefulMemes | str | os.PathLike) -> HatefulMemes:
    if isinstance(test, HatefulMemes):
        return test
    path = Path(test)
    return HatefulMemes(path, path.parent)  # images are not opened


def write_memes_submission(
    predictions: PredictionsLike,
    test: HatefulMemes | str | os.PathLike,
    out: str | os.PathLike,
    *,
    threshold: float = 0.5,
    overwrite: bool = False,
) -> Path:
    """Write the Hateful Memes submission CSV (``id,proba,label``) for the memes of the test
    JSONL ``test`` (a path or a :class:`HatefulMemes`), in its order.

    ``predictions`` map meme ids (``HatefulMemes.ids``) to what :func:`memes_proba_label`
    takes; every meme exactly once (else :class:`SubmissionError` names the ids). ``out``: a
    ``.csv`` file, or a folder that receives ``<test stem>_submission.csv``.
    """
    memes = _memes_reference(test)
    ids = [_meme_id(i) for i in memes.ids]
    keyed = _keyed(
        _entries(predictions),
        _meme_id,
        ids,
        "Hateful Memes predictions",
        str(memes.path),
        "meme ids",
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "proba", "label"])
    for meme_id, original in zip(ids, memes.ids):
        value, where = keyed[meme_id]
        try:
            proba, label = memes_proba_label(value, threshold)
        except ValueError as e:
            raise SubmissionError(
                "Hateful Memes predictions", f"{where} (meme {meme_id}): {e}", field="prediction"
            ) from None
        writer.writerow([original, f"{proba:.8f}", label])
    out = Path(out)
    path = (
        out
        if out.suffix == ".csv" and not out.is_dir()
        else out / f"{memes.path.stem}_submission.csv"
    )
    return _write_text(path, buffer.getvalue(), overwrite)


def read_memes_submission(path: str | os.PathLike) -> list[tuple[int | str, float, int]]:
    """Read a Hateful Memes submission CSV as ``(id, proba, label)`` rows in file order,
    checking the header ``id,proba,label``, ``proba`` in [0, 1] and ``label`` 0 / 1; a bad row
    is refused naming its line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Hateful Memes submission {path} does not exist")
    out = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["id", "proba", "label"]:
            raise SubmissionError(
                path, f"the header must be 'id,proba,label', got {header!r}", line=1
            )
        for row in reader:
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise SubmissionError(
                    path, f"expected 3 comma-separated fields, found {len(row)}", line=line
                )
            ident, proba_text, label_text = (cell.strip() for cell in row)
            if not ident:
                raise SubmissionError(path, "empty", line=line, field="id")
            try:
                proba = float(proba_text)
            except ValueError:
                proba = math.nan
            if not 0.0 <= proba <= 1.0:
                raise SubmissionError(
                    path, f"{proba_text!r} is not a probability in [0, 1]", line=line, field="proba"
                )
            if label_text not in ("0", "1"):
                raise SubmissionError(
                    path, f"{label_text!r} is not 0 or 1", line=line, field="label"
                )
            out.append((_meme_id(ident), proba, int(label_text)))
    if not out:
        raise SubmissionError(path, "holds no rows")
    return out


def validate_memes_submission(
    path: str | os.PathLike, test: HatefulMemes | str | os.PathLike
) -> IdCheck:
    """Check a Hateful Memes submission CSV against the test JSONL: the format, and every
    meme id exactly once and no other. Returns the :class:`IdCheck`; raises
    :class:`SubmissionError` naming the problems."""
    rows = read_memes_submission(path)
    memes = _memes_reference(test)
    check = check_ids([_meme_id(i) for i in memes.ids], [r[0] for r in rows], "meme ids")
    _refuse(check, path, str(memes.path), "the submission")
    return check
