"""Downstream task data read from the official distribution formats.

GLUE (the nine tasks' TSV files), VQAv2 (question and annotation JSON), SNLI-VE (JSONL),
Hateful Memes (JSONL), COCO / Flickr30K retrieval (Karpathy-split JSON), CIFAR-10 / CIFAR-100
(python pickle batches) and ImageFolder trees, as map-style datasets.

Samples are dicts keyed like their shapes-world counterparts (:mod:`flava_zoo.data.shapes`),
so one fine-tuning module serves both: ``image`` (a PIL RGB image, or whatever ``transform``
makes of it), ``text``, ``label`` and ``index`` (the sample's position). A label the split
does not have (GLUE and Hateful Memes test files, VQAv2 questions without annotations) is
``None``; a collator must drop or refuse it.

Errors in a file name the file, the line (TSV, JSONL, JSON syntax) or the item, and the field
(:class:`TaskDataError`); a split with no samples raises ``ValueError(... has no samples ...)``,
so nothing silently evaluates on zero samples. Images are opened lazily, in ``__getitem__``.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from flava_zoo._jsonl import read_jsonl as _read_jsonl
from flava_zoo.tasks.entailment import SNLI_VE_LABELS
from flava_zoo.tasks.glue import GLUE_TASKS, GlueTaskSpec
from flava_zoo.tasks.memes import HATEFUL_MEMES_LABELS
from flava_zoo.tasks.vqa import (
    normalize_vqa_answer,
    strip_vqa_answer,
    vqa_human_answer_forms,
    vqa_leave_one_out_score,
)
from flava_zoo.transforms import to_rgb

__all__ = [
    "GLUE_TASKS",
    "IGNORE_INDEX",
    "SNLI_VE_LABELS",
    "Cifar",
    "GlueTask",
    "GlueTaskSpec",
    "HatefulMemes",
    "ImageFolderDataset",
    "KarpathyPairs",
    "KarpathyRetrieval",
    "SnliVE",
    "TaskDataError",
    "VQAv2",
    "build_answer_vocab",
    "check_head",
    "image_folder",
]

Transform = Callable[[Image.Image], Any]
IGNORE_INDEX = -100
"""``label`` of a VQAv2 question whose majority answer is outside the answer vocabulary
(``torch.nn.functional.cross_entropy``'s default ``ignore_index``)."""


# ----------------------------------------------------------------------------- helpers
class TaskDataError(ValueError):
    """A task file that does not follow its official format: names file, line and field."""

    def __init__(
        self, path: str | Path, problem: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line
        self.field = field


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory {path} does not exist")
    return path


def _require_samples(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what} has no samples: refusing to train or evaluate on zero samples")


def not_utf8(path: Path) -> TaskDataError:
    """The error for an official file that is not UTF-8, naming the line and the byte of
    its first undecodable character (the file is read again as bytes to find them: a text
    stream's decode error only knows its position within a buffer)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return TaskDataError(path, f"not valid UTF-8 (byte 0x{data[e.start]:02x})", line=line)
    return TaskDataError(path, "not valid UTF-8")


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TaskDataError(
            path, f"not valid JSON ({e.msg}, column {e.colno})", line=e.lineno
        ) from e
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file; a line that
    is not JSON, not an object or not UTF-8 raises :class:`TaskDataError` naming it
    (the package's one reader, :func:`flava_zoo._jsonl.read_jsonl`)."""
    return _read_jsonl(path, error=TaskDataError)


def _get(
    record: Mapping[str, Any],
    key: str,
    types: type | tuple[type, ...],
    path: Path,
    *,
    line: int | None = None,
    where: str = "",
) -> Any:
    """``record[key]``, checked for presence and type; ``where`` prefixes the field name."""
    name = f"{where}{key}"
    if key not in record:
        raise TaskDataError(path, "missing", line=line, field=name)
    value = record[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        expected = " or ".join(t.__name__ for t in _as_tuple(types))
        raise TaskDataError(
            path,
            f"expected {expected}, got {type(value).__name__} {value!r}",
            line=line,
            field=name,
        )
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _load_image(path: Path, context: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} ({context}) does not exist")
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:
        raise OSError(f"cannot read image {path} ({context}): {e}") from e
    return to_rgb(image)


class _ImageDataset(Dataset):
    transform: Transform | None

    def _image(self, path: Path, context: str) -> Any:
        image = _load_image(path, context)
        return self.transform(image) if self.transform is not None else image

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return index


def check_head(dataset: Any, num_outputs: int) -> None:
    """Raise ``ValueError`` when a head with ``num_outputs`` outputs does not fit ``dataset``'s
    label set (its ``num_labels``; ``label_names`` are quoted in the message)."""
    expected = int(dataset.num_labels)
    if int(num_outputs) != expected:
        names = list(getattr(dataset, "label_names", None) or [])
        shown = (
            f" ({', '.join(map(str, names[:10]))}{', ...' if len(names) > 10 else ''})"
            if names
            else ""
        )
        raise ValueError(
            f"{type(dataset).__name__} has {expected} labels{shown} but the head has "
            f"{num_outputs} outputs"
        )


# -------------------------------------------------------------------------------- GLUE
GLUE_DIAGNOSTIC_DIRECTORY = "diagnostic"
"""Where the GLUE download script puts the diagnostic set (AX, scored with the MNLI head):
``<glue root>/diagnostic/diagnostic.tsv``, columns ``index``, ``sentence1``, ``sentence2``,
no labels. It is MNLI's ``diagnostic`` split."""


def _is_unlabelled_split(split: str) -> bool:
    """GLUE test files and the diagnostic set carry no label column."""
    return split.startswith("test") or split == "diagnostic"


class GlueTask(Dataset):
    """A GLUE task split read from its official TSV file.

    ``root_or_file``: the GLUE root (holding ``CoLA/``, ``SST-2/``, ...), a task directory, or
    the TSV file itself. Files are read as the GLUE download script writes them: tab separated,
    ``csv.QUOTE_NONE`` (quotes are text: sentences hold unbalanced ``"``), UTF-8 with an
    optional byte-order mark (MRPC's header starts with one), CoLA train / dev without a
    header. Columns are found by their header names, so the extra MNLI / STS-B columns are
    ignored.

    Sample: ``{"text", "text_pair", "label", "index"}``: ``text_pair`` is ``None`` for the
    single-sentence tasks (CoLA, SST-2); ``label`` is the class index (into
    ``spec.label_names``), the STS-B score as a float, or ``None`` in test files (which carry no
    labels).

    :attr:`ids`: each row's ``index`` column (QQP's ``id``) as a string, in file order, or its
    position where the file has neither (headerless CoLA train / dev, SST-2 train / dev);
    ``ids[sample["index"]]`` is what a GLUE server file's ``index`` column echoes. MNLI's
    ``diagnostic`` split is the label-less diagnostic set (AX), found at
    ``<root>/diagnostic/diagnostic.tsv``.
    """

    def __init__(self, root_or_file: str | Path, task: str, split: str) -> None:
        if task not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
        self.spec = GLUE_TASKS[task]
        if split not in self.spec.files:
            raise ValueError(f"GLUE {task} has splits {list(self.spec.files)}, not {split!r}")
        self.split = split
        self.path = self._resolve(Path(root_or_file))
        self.texts: list[str] = []
        self.text_pairs: list[str] | None = [] if self.spec.pair_column else None
        self.labels: list[int | float | None] = []
        self.ids: list[str] = []
        self._read()
        _require_samples(len(self.texts), f"GLUE {task} {split} ({self.path})")

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.spec.label_names

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def is_labelled(self) -> bool:
        return bool(self.labels) and self.labels[0] is not None

    def _resolve(self, root: Path) -> Path:
        if root.is_file():
            return root
        name = self.spec.files[self.split]
        candidates = [root / self.spec.directory / name, root / name]
        if self.split == "diagnostic":
            candidates.insert(0, root / GLUE_DIAGNOSTIC_DIRECTORY / name)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"GLUE {self.spec.name} {self.split} file not found; tried "
            + ", ".join(str(c) for c in candidates)
        )

    def _read(self) -> None:
        try:
            self._read_rows()
        except UnicodeDecodeError:
            raise not_utf8(self.path) from None

    def _read_rows(self) -> None:
        spec, path = self.spec, self.path
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            try:
                first = next(reader, None)
                if first is None:
                    raise TaskDataError(path, "the file is empty")
                if spec.headerless_columns is not None and first[:1] != ["index"]:
                    header, rows = list(spec.headerless_columns), _chain([first], reader)
                else:
                    header, rows = first, reader
                columns = {name: i for i, name in enumerate(header)}
                header_line = 1 if header is first else None

                def column(name: str) -> int:
                    if name not in columns:
                        raise TaskDataError(
                            path, f"no column {name!r} (columns: {header})", line=header_line
                        )
                    return columns[name]

                text_col = column(spec.text_column)
                pair_col = column(spec.pair_column) if spec.pair_column else None
                labelled = spec.label_column in columns or not _is_unlabelled_split(self.split)
                label_col = column(spec.label_column) if labelled else None
                # test files number their rows in "index" (QQP: "id"); the submission echoes it
                id_col = columns.get("index", columns.get("id")) if header_line else None
                for row in rows:
                    line = reader.line_num
                    if not row:  # a blank line
                        continue
                    if len(row) != len(header):
                        raise TaskDataError(
                            path,
                            f"expected {len(header)} tab-separated fields ({header}), found {len(row)}",
                            line=line,
                        )
                    self.ids.append(row[id_col] if id_col is not None else str(len(self.texts)))
                    self.texts.append(row[text_col])
                    if self.text_pairs is not None and pair_col is not None:
                        self.text_pairs.append(row[pair_col])
                    label = None
                    if label_col is not None:
                        label = self._parse_label(row[label_col], line)
                    self.labels.append(label)
            except csv.Error as e:
                raise TaskDataError(path, f"malformed TSV ({e})", line=reader.line_num) from e

    def _parse_label(self, raw: str, line: int) -> int | float:
        spec = self.spec
        if spec.label_kind == "name":
            if raw not in spec.label_names:
                raise TaskDataError(
                    self.path,
                    f"{raw!r} is not one of {list(spec.label_names)}",
                    line=line,
                    field=spec.label_column,
                )
            return spec.label_names.index(raw)
        if spec.label_kind == "index":
            if raw.strip() not in [str(i) for i in range(spec.num_labels)]:
                raise TaskDataError(
                    self.path,
                    f"{raw!r} is not a class index in 0..{spec.num_labels - 1} {list(spec.label_names)}",
                    line=line,
                    field=spec.label_column,
                )
            return int(raw)
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not 0.0 <= score <= 5.0:
            raise TaskDataError(
                self.path,
                f"{raw!r} is not a similarity score in [0, 5]",
                line=line,
                field=spec.label_column,
            )
        return score

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return {
            "text": self.texts[index],
            "text_pair": self.text_pairs[index] if self.text_pairs is not None else None,
            "label": self.labels[index],
            "index": index,
        }

    def __repr__(self) -> str:
        return f"GlueTask({self.spec.name!r}, split={self.split!r}, size={len(self)})"


def _chain(first: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from first
    yield from rest


# ------------------------------------------------------------------------------- VQAv2
def build_answer_vocab(
    annotations: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]], top_k: int = 3129
) -> list[str]:
    """The ``top_k`` most frequent answers, normalised with the official VQA normalisation.

    Counts every human answer (ten per question) of ``annotations`` (an official annotation
    file, its loaded JSON, or its ``annotations`` list); ties go to the alphabetically first
    answer, so the vocabulary is deterministic. 3129 is the usual VQAv2 size (the answers seen
    at least nine times in train + val, Teney et al. 2018).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    path, items = _annotation_items(annotations)
    counts: Counter[str] = Counter()
    for i, ann in enumerate(items):
        for j, answer in enumerate(_get(ann, "answers", list, path, where=f"annotations[{i}].")):
            if not isinstance(answer, Mapping):
                raise TaskDataError(
                    path, "expected an object", field=f"annotations[{i}].answers[{j}]"
                )
            text = _get(answer, "answer", str, path, where=f"annotations[{i}].answers[{j}].")
            counts[normalize_vqa_answer(text)] += 1
    counts.pop("", None)
    if not counts:
        raise ValueError(f"VQA annotations {path} have no answers: cannot build a vocabulary")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, _ in ranked[:top_k]]


def _annotation_items(
    annotations: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> tuple[Path, list[Mapping[str, Any]]]:
    path = Path("<annotations>")
    if isinstance(annotations, (str, Path)):
        path = _require_file(annotations, "VQA annotation")
        annotations = _read_json(path)
    if isinstance(annotations, Mapping):
        annotations = _get(annotations, "annotations", list, path)
    if not isinstance(annotations, Sequence):
        raise TypeError(
            f"annotations must be a file, a dict or a list, got {type(annotations).__name__}"
        )
    for i, ann in enumerate(annotations):
        if not isinstance(ann, Mapping):
            raise TaskDataError(
                path, f"expected an object, got {type(ann).__name__}", field=f"annotations[{i}]"
            )
    return path, list(annotations)


@dataclass
class _VQAQuestion:
    question_id: int
    image_id: int
    question: str
    answers: list[str] | None = None
    answer: str | None = None
    question_type: str | None = None
    answer_type: str | None = None
    label: int | None = None
    target: list[tuple[int, float]] = field(default_factory=list)


class VQAv2(_ImageDataset):
    """VQAv2 from the official question and annotation JSON files.

    Sample: ``{"image", "question", "question_id", "image_id", "answers", "answer", "label",
    "target", "question_type", "answer_type", "index"}``. ``answers`` are the ten raw human
    answers (for :class:`~flava_zoo.evaluation.metrics.VQAAccuracy`), ``answer`` the
    annotators' majority (``multiple_choice_answer``), ``label`` its index in ``answer_vocab``
    (:data:`IGNORE_INDEX` when outside it), ``target`` the soft scores over the vocabulary.
    Without ``annotations_json`` (test-dev / test) those are ``None``.

    Soft targets: an answer given by ``n`` of the humans (after normalisation) scores
    ``min(n / 3, 1)`` (``soft_score="min_count"``, the common VQA training target: 1/3, 2/3,
    1 for one to three humans). ``soft_score="leave_one_out"`` instead makes the target of
    each vocabulary entry its official accuracy as a prediction for the question,
    :func:`~flava_zoo.evaluation.metrics.vqa_score` (0.3, 0.6, 0.9, 1 for one to four matching
    humans of ten), including the official evaluator's rule that a question whose human
    answers are all identical (after stripping) is compared unnormalised: ten humans
    ``"two"`` give the normalised entry ``"2"`` no target. ``min_count`` is not a vocabulary
    threshold: the vocabulary is the ``top_k`` most frequent answers.

    ``answer_vocab``: by default the :func:`build_answer_vocab` of these annotations (for the
    training split); evaluation splits must be given the training vocabulary. Human answers
    outside the vocabulary are counted (``num_oov_answers``, and ``num_untargeted`` questions
    with no answer in it) and reported in one warning, never dropped silently.

    Images: ``image_dir / image_pattern.format(subtype=..., image_id=...)``; ``subtype``
    defaults to the question file's ``data_subtype`` (``train2014``, ``val2014``,
    ``test2015``), giving COCO's ``COCO_val2014_000000000042.jpg``.
    """

    def __init__(
        self,
        questions_json: str | Path,
        annotations_json: str | Path | None,
        image_dir: str | Path,
        answer_vocab: Sequence[str] | None = None,
        transform: Transform | None = None,
        *,
        image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg",
        subtype: str | None = None,
        soft_score: Literal["min_count", "leave_one_out"] = "min_count",
        top_k: int = 3129,
    ) -> None:
        if soft_score not in ("min_count", "leave_one_out"):
            raise ValueError(
                f"soft_score must be 'min_count' or 'leave_one_out', got {soft_score!r}"
            )
        self.questions_json = _require_file(questions_json, "VQA question")
        self.image_dir = Path(image_dir)
        self.transform = transform
        self.image_pattern = image_pattern
        self.soft_score = soft_score
        data = _read_json(self.questions_json)
        if not isinstance(data, Mapping):
            raise TaskDataError(self.questions_json, "expected a JSON object with 'questions'")
        if subtype is None and "{subtype" in image_pattern:
            subtype = _get(data, "data_subtype", str, self.questions_json)
        self.subtype = subtype
        self._questions: list[_VQAQuestion] = []
        by_id: dict[int, _VQAQuestion] = {}
        for i, q in enumerate(_get(data, "questions", list, self.questions_json)):
            where = f"questions[{i}]."
            if not isinstance(q, Mapping):
                raise TaskDataError(self.questions_json, "expected an object", field=where[:-1])
            item = _VQAQuestion(
                question_id=_get(q, "question_id", int, self.questions_json, where=where),
                image_id=_get(q, "image_id", int, self.questions_json, where=where),
                question=_get(q, "question", str, self.questions_json, where=where),
            )
            if item.question_id in by_id:
                raise TaskDataError(
                    self.questions_json,
                    f"duplicate question_id {item.question_id}",
                    field=f"{where}question_id",
                )
            by_id[item.question_id] = item
            self._questions.append(item)
        _require_samples(len(self._questions), f"VQA questions {self.questions_json}")

        self.annotations_json = None
        self.answer_vocab: list[str] | None = (
            list(answer_vocab) if answer_vocab is not None else None
        )
        if self.answer_vocab is not None:
            duplicates = [a for a, n in Counter(self.answer_vocab).items() if n > 1]
            if duplicates:
                raise ValueError(f"answer_vocab repeats answers: {duplicates[:5]}")
            if not self.answer_vocab:
                raise ValueError("answer_vocab is empty")
            raw = [a for a in self.answer_vocab if normalize_vqa_answer(a) != a]
            if raw:
                warnings.warn(
                    f"{len(raw)} answer_vocab entries are not normalised answers and get no "
                    f"min_count target (e.g. {raw[0]!r} -> {normalize_vqa_answer(raw[0])!r})",
                    stacklevel=2,
                )
        self.num_answers = self.num_oov_answers = self.num_untargeted = 0
        if annotations_json is not None:
            self.annotations_json = _require_file(annotations_json, "VQA annotation")
            path, items = _annotation_items(self.annotations_json)
            self._attach_annotations(path, items, by_id)
            if self.answer_vocab is None:
                self.answer_vocab = build_answer_vocab(items, top_k)
            self._make_targets(normalize_vqa_answer)

    def _attach_annotations(
        self,
        path: Path,
        items: list[Mapping[str, Any]],
        by_id: dict[int, _VQAQuestion],
    ) -> None:
        seen: set[int] = set()
        for i, ann in enumerate(items):
            where = f"annotations[{i}]."
            qid = _get(ann, "question_id", int, path, where=where)
            if qid not in by_id:
                raise TaskDataError(
                    path,
                    f"question_id {qid} is not in {self.questions_json}",
                    field=f"{where}question_id",
                )
            answers = _get(ann, "answers", list, path, where=where)
            if not answers:
                raise TaskDataError(path, "no human answers", field=f"{where}answers")
            item = by_id[qid]
            item.answers = []
            for j, a in enumerate(answers):
                if not isinstance(a, Mapping):
                    raise TaskDataError(path, "expected an object", field=f"{where}answers[{j}]")
                item.answers.append(_get(a, "answer", str, path, where=f"{where}answers[{j}]."))
            item.answer = _get(ann, "multiple_choice_answer", str, path, where=where)
            item.question_type = ann.get("question_type")
            item.answer_type = ann.get("answer_type")
            seen.add(qid)
        missing = [q.question_id for q in self._questions if q.question_id not in seen]
        if missing:
            raise TaskDataError(
                path,
                f"{len(missing)} questions of {self.questions_json} have no annotation "
                f"(first question_id: {missing[0]})",
            )

    def _make_targets(self, normalize: Callable[[str], str]) -> None:
        assert self.answer_vocab is not None
        index = {a: i for i, a in enumerate(self.answer_vocab)}
        # leave_one_out: what the official evaluator compares a vocabulary entry as, when the
        # humans of a question disagree (normalised) and when they agree (only stripped)
        by_normalised: dict[str, list[int]] = {}
        by_stripped: dict[str, list[int]] = {}
        for i, a in enumerate(self.answer_vocab):
            by_normalised.setdefault(normalize(a), []).append(i)
            by_stripped.setdefault(strip_vqa_answer(a), []).append(i)
        for item in self._questions:
            assert item.answers is not None and item.answer is not None
            counts = Counter(normalize(a) for a in item.answers)
            n = len(item.answers)
            self.num_answers += n
            self.num_oov_answers += sum(c for a, c in counts.items() if a not in index)
            if self.soft_score == "min_count":
                item.target = [
                    (index[a], min(c / 3.0, 1.0)) for a, c in sorted(counts.items()) if a in index
                ]
            else:
                forms, normalised = vqa_human_answer_forms(item.answers)
                lookup = by_normalised if normalised else by_stripped
                scores = {
                    i: vqa_leave_one_out_score(c, n)
                    for form, c in Counter(forms).items()
                    for i in lookup.get(form, ())
                }
                item.target = [(i, s) for i, s in sorted(scores.items()) if s > 0]
            if not item.target:
                self.num_untargeted += 1
            item.label = index.get(normalize(item.answer), IGNORE_INDEX)
        if self.num_oov_answers:
            warnings.warn(
                f"VQA {self.annotations_json}: {self.num_oov_answers} of {self.num_answers} human "
                f"answers ({100 * self.num_oov_answers / self.num_answers:.1f}%) are outside the "
                f"{len(self.answer_vocab)}-answer vocabulary; {self.num_untargeted} of "
                f"{len(self._questions)} questions ({100 * self.num_untargeted / len(self._questions):.1f}%) "
                "have no answer in it (all-zero soft target)",
                stacklevel=3,
            )

    @property
    def num_labels(self) -> int:
        if self.answer_vocab is None:
            raise ValueError("this VQAv2 split has no answer vocabulary: pass answer_vocab")
        return len(self.answer_vocab)

    @property
    def label_names(self) -> list[str] | None:
        return self.answer_vocab

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.image_pattern.format(subtype=self.subtype, image_id=image_id)

    def __len__(self) -> int:
        return len(self._questions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        q = self._questions[index]
        target = None
        if q.answers is not None and self.answer_vocab is not None:
            target = torch.zeros(len(self.answer_vocab))
            for i, score in q.target:
                target[i] = score
        image = self._image(
            self.image_path(q.image_id), f"question_id {q.question_id} in {self.questions_json}"
        )
        return {
            "image": image,
            "question": q.question,
            "question_id": q.question_id,
            "image_id": q.image_id,
            "answers": list(q.answers) if q.answers is not None else None,
            "answer": q.answer,
            "label": q.label,
            "target": target,
            "question_type": q.question_type,
            "answer_type": q.answer_type,
            "index": index,
        }

    def __repr__(self) -> str:
        return f"VQAv2({str(self.questions_json)!r}, size={len(self)})"


# ------------------------------------------------------------------------------ SNLI-VE


class SnliVE(_ImageDataset):
    """SNLI-VE visual entailment from an official JSONL file (``snli_ve_{train,dev,test}.jsonl``).

    The premise is a Flickr30K image in ``image_dir``, named by either form of the official
    files (github.com/necla-ml/SNLI-VE): ``"Flikr30kID": "3416050480.jpg"`` (sic, with the
    extension) in the files as distributed, or ``"Flickr30K_ID": "3416050480"`` (no extension)
    in those regenerated by its ``vet/tools/snli_ve_generator.py``; either gives
    ``image_dir / "3416050480.jpg"`` (never ``.jpg.jpg``); a line with both must name the same
    image. The hypothesis is ``sentence2`` (``sentence1``, the SNLI caption premise, is not
    part of the task). Sample: ``{"image", "text", "hypothesis", "label", "index"}``: ``text``
    and ``hypothesis`` are the same sentence (``hypothesis`` is :class:`ShapesEntailment`'s
    key), ``label`` indexes :data:`SNLI_VE_LABELS`.

    SNLI pairs without annotator consensus (``gold_label`` ``"-"``) are skipped when
    ``skip_no_consensus`` and counted in ``num_skipped`` and a warning; any other label is an
    error.
    """

    label_names = SNLI_VE_LABELS
    num_labels = len(SNLI_VE_LABELS)
    IMAGE_FIELDS: tuple[str, ...] = ("Flikr30kID", "Flickr30K_ID")
    """The image field as distributed (sic; ``"NNN.jpg"``) and as regenerated (``"NNN"``)."""

    def __init__(
        self,
        jsonl: str | Path,
        image_dir: str | Path,
        transform: Transform | None = None,
        *,
        skip_no_consensus: bool = True,
    ) -> None:
        self.path = _require_file(jsonl, "SNLI-VE")
        self.image_dir = Path(image_dir)
        self.transform = transform
        self._samples: list[tuple[str, str, int, int]] = []
        self.num_skipped = 0
        for line, record in read_jsonl(self.path):
            image_file = self._image_file(record, line)
            hypothesis = _get(record, "sentence2", str, self.path, line=line)
            gold = _get(record, "gold_label", str, self.path, line=line)
            if gold == "-" and skip_no_consensus:
                self.num_skipped += 1
                continue
            if gold not in SNLI_VE_LABELS:
                raise TaskDataError(
                    self.path,
                    f"{gold!r} is not one of {list(SNLI_VE_LABELS)}",
                    line=line,
                    field="gold_label",
                )
            self._samples.append((image_file, hypothesis, SNLI_VE_LABELS.index(gold), line))
        if self.num_skipped:
            warnings.warn(
                f"SNLI-VE {self.path}: skipped {self.num_skipped} pairs without a gold label ('-')",
                stacklevel=2,
            )
        _require_samples(len(self._samples), f"SNLI-VE {self.path}")

    def _image_file(self, record: Mapping[str, Any], line: int) -> str:
        """The image file name (``"NNN.jpg"``) of one JSONL record, from either image field."""
        names: dict[str, str] = {}
        for key in self.IMAGE_FIELDS:
            if key in record:
                value = str(_get(record, key, (str, int), self.path, line=line))
                if not value or value == ".jpg":
                    raise TaskDataError(self.path, "empty image id", line=line, field=key)
                names[key] = value if value.endswith(".jpg") else f"{value}.jpg"
        if not names:
            raise TaskDataError(
                self.path,
                "missing the image field: expected 'Flikr30kID' (as distributed, e.g. "
                "\"3416050480.jpg\") or 'Flickr30K_ID' (as regenerated, e.g. \"3416050480\")",
                line=line,
            )
        if len(set(names.values())) > 1:
            raise TaskDataError(
                self.path,
                f"'Flikr30kID' {record['Flikr30kID']!r} and 'Flickr30K_ID' "
                f"{record['Flickr30K_ID']!r} name different images",
                line=line,
            )
        return next(iter(names.values()))

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        image_file, hypothesis, label, line = self._samples[index]
        image = self._image(self.image_dir / image_file, f"line {line} of {self.path}")
        return {
            "image": image,
            "text": hypothesis,
            "hypothesis": hypothesis,
            "label": label,
            "index": index,
        }

    def __repr__(self) -> str:
        return f"SnliVE({str(self.path)!r}, size={len(self)})"


# ------------------------------------------------------------------------ Hateful Memes
class HatefulMemes(_ImageDataset):
    """Hateful Memes from an official JSONL file (``train.jsonl``, ``dev_seen.jsonl``, ...).

    Fields ``id``, ``img`` (relative to ``image_root``, e.g. ``img/42953.png``), ``text`` and
    ``label`` (1 hateful, 0 not; absent in unlabelled test files, giving ``label`` ``None``;
    a file must be all labelled or all unlabelled). Sample: ``{"image", "text", "label", "id",
    "index"}``, like :class:`ShapesMemes`.
    """

    label_names = HATEFUL_MEMES_LABELS
    num_labels = 2

    def __init__(
        self, jsonl: str | Path, image_root: str | Path, transform: Transform | None = None
    ) -> None:
        self.path = _require_file(jsonl, "Hateful Memes")
        self.image_root = Path(image_root)
        self.transform = transform
        self._samples: list[tuple[int | str, str, str, int | None]] = []
        labelled: bool | None = None
        for line, record in read_jsonl(self.path):
            meme_id = _get(record, "id", (int, str), self.path, line=line)
            img = _get(record, "img", str, self.path, line=line)
            text = _get(record, "text", str, self.path, line=line)
            has_label = "label" in record
            if labelled is None:
                labelled = has_label
            elif has_label != labelled:
                state = "has" if has_label else "lacks"
                raise TaskDataError(
                    self.path,
                    f"this line {state} a label, unlike the file's first line",
                    line=line,
                    field="label",
                )
            label = None
            if has_label:
                label = _get(record, "label", int, self.path, line=line)
                if label not in (0, 1):
                    raise TaskDataError(
                        self.path, f"{label!r} is not 0 or 1", line=line, field="label"
                    )
            self._samples.append((meme_id, img, text, label))
        _require_samples(len(self._samples), f"Hateful Memes {self.path}")

    @property
    def ids(self) -> list[int | str]:
        """The memes' ``id`` fields in file order (``ids[sample["index"]]``), as the challenge's
        submission CSV names them; read without opening any image."""
        return [meme_id for meme_id, _, _, _ in self._samples]

    @property
    def labels(self) -> list[int | None]:
        """The memes' labels in file order (1 hateful, 0 not; ``None`` in unlabelled files)."""
        return [label for _, _, _, label in self._samples]

    @property
    def is_labelled(self) -> bool:
        """Whether the file carries labels (``test_seen`` / ``test_unseen`` do not)."""
        return self._samples[0][3] is not None

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        meme_id, img, text, label = self._samples[index]
        image = self._image(self.image_root / img, f"meme id {meme_id} in {self.path}")
        return {"image": image, "text": text, "label": label, "id": meme_id, "index": index}

    def __repr__(self) -> str:
        return f"HatefulMemes({str(self.path)!r}, size={len(self)})"


# ------------------------------------------------------------------- Karpathy retrieval
_KARPATHY_SPLITS = ("train", "val", "test", "restval")


class KarpathyRetrieval(_ImageDataset):
    """COCO / Flickr30K image-text retrieval in the Karpathy-split JSON format.

    ``dataset_coco.json`` / ``dataset_flickr30k.json``: ``{"images": [{"filepath" (COCO only),
    "filename", "split", "sentences": [{"raw", ...}], ...}]}``. Image ``i`` is
    ``image_root / filepath / filename``. ``split="train"`` includes ``restval`` (the usual
    113k-image COCO training set) unless ``include_restval=False``.

    For evaluation: :attr:`images` (paths), :attr:`texts` (every caption, image by image) and
    :attr:`text_to_image` (the image index of each caption), as
    :func:`~flava_zoo.evaluation.retrieval.retrieval_recall` takes them; every caption is kept
    (five per image, a few COCO images have more) unless ``max_captions_per_image``.
    As a dataset, one sample per image: ``{"image", "text" (its first caption), "index"}``;
    :meth:`pairs` gives one sample per caption for fine-tuning (like ``ShapesPairs`` with
    ``captions_per_image="all"``).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        split: str,
        transform: Transform | None = None,
        *,
        include_restval: bool = True,
        max_captions_per_image: int | None = None,
    ) -> None:
        if split not in _KARPATHY_SPLITS:
            raise ValueError(f"Karpathy split must be one of {_KARPATHY_SPLITS}, got {split!r}")
        if max_captions_per_image is not None and max_captions_per_image < 1:
            raise ValueError(
                f"max_captions_per_image must be at least 1, got {max_captions_per_image}"
            )
        self.path = _require_file(json_path, "Karpathy split")
        self.image_root = Path(image_root)
        self.split = split
        self.transform = transform
        wanted = {split, "restval"} if split == "train" and include_restval else {split}
        data = _read_json(self.path)
        if not isinstance(data, Mapping):
            raise TaskDataError(self.path, "expected a JSON object with 'images'")
        self.images: list[Path] = []
        self.captions: list[list[str]] = []
        for i, entry in enumerate(_get(data, "images", list, self.path)):
            where = f"images[{i}]."
            if not isinstance(entry, Mapping):
                raise TaskDataError(self.path, "expected an object", field=where[:-1])
            entry_split = _get(entry, "split", str, self.path, where=where)
            if entry_split not in _KARPATHY_SPLITS:
                raise TaskDataError(
                    self.path,
                    f"{entry_split!r} is not one of {_KARPATHY_SPLITS}",
                    field=f"{where}split",
                )
            if entry_split not in wanted:
                continue
            filename = _get(entry, "filename", str, self.path, where=where)
            filepath = (
                _get(entry, "filepath", str, self.path, where=where) if "filepath" in entry else ""
            )
            sentences = _get(entry, "sentences", list, self.path, where=where)
            if not sentences:
                raise TaskDataError(self.path, "image has no captions", field=f"{where}sentences")
            captions = []
            for j, sentence in enumerate(sentences):
                if not isinstance(sentence, Mapping):
                    raise TaskDataError(
                        self.path, "expected an object", field=f"{where}sentences[{j}]"
                    )
                captions.append(
                    _get(sentence, "raw", str, self.path, where=f"{where}sentences[{j}].")
                )
            self.images.append(self.image_root / filepath / filename)
            self.captions.append(captions[:max_captions_per_image])
        _require_samples(len(self.images), f"Karpathy {split} split of {self.path}")
        self.texts: list[str] = [c for caps in self.captions for c in caps]
        self.text_to_image: Tensor = torch.tensor(
            [i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long
        )

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Any:
        """Image ``index``, transformed."""
        index = self._check_index(index)
        return self._image(
            self.images[index], f"image {index} of the {self.split} split of {self.path}"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        return {"image": self.load_image(index), "text": self.captions[index][0], "index": index}

    def pairs(self) -> KarpathyPairs:
        """One sample per caption: ``{"image", "text", "index"}``, ``index`` being the image."""
        return KarpathyPairs(self)

    def __repr__(self) -> str:
        return f"KarpathyRetrieval({str(self.path)!r}, split={self.split!r}, images={len(self)}, texts={len(self.texts)})"


class KarpathyPairs(Dataset):
    """Caption-level view of a :class:`KarpathyRetrieval` split (see :meth:`~KarpathyRetrieval.pairs`)."""

    def __init__(self, retrieval: KarpathyRetrieval) -> None:
        self.retrieval = retrieval

    def __len__(self) -> int:
        return len(self.retrieval.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} captions")
        image_index = int(self.retrieval.text_to_image[index])
        return {
            "image": self.retrieval.load_image(image_index),
            "text": self.retrieval.texts[index],
            "index": image_index,
        }


# -------------------------------------------------------------------------------- CIFAR
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals plain numpy arrays need.

    The CIFAR batches are pickles, and unpickling runs whatever callable a file names: a
    tampered download could execute code. The official files hold only dicts, lists, byte
    strings and numpy arrays, so any other global is refused. ``_codecs.encode`` is how
    Python 3 writes ``bytes`` at pickle protocol 2; it only encodes a string.
    """

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        canonical = (
            module.replace("numpy.core.", "numpy._core.", 1)
            if module.startswith("numpy.core.")
            else module
        )
        if (canonical, name) in self._ALLOWED:
            return super().find_class(canonical, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: CIFAR batches hold only numpy arrays"
        )


def _load_cifar_pickle(path: Path) -> dict[str, Any]:
    _require_file(path, "CIFAR")
    try:
        with path.open("rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise TaskDataError(path, str(e)) from e
    except (EOFError, ValueError, TypeError) as e:
        raise TaskDataError(path, f"not a CIFAR python pickle ({e})") from e
    if not isinstance(data, dict):
        raise TaskDataError(path, f"expected a dict, got {type(data).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _cifar_field(data: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise TaskDataError(path, f"missing (keys: {sorted(data)})", field=key)
    return data[key]


class Cifar(_ImageDataset):
    """CIFAR-10 / CIFAR-100 from the official python-pickle distribution.

    ``root`` holds ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``), or is one of
    those directories. ``variant`` (``"cifar10"`` / ``"cifar100"``) picks one when ``root``
    holds both. ``coarse`` selects CIFAR-100's 20 superclasses. Batches are unpickled with an
    allow-list of numpy globals (see :class:`_NumpyOnlyUnpickler`): unpickling can run code.

    Sample: ``{"image", "label", "index"}`` (``image`` a 32x32 PIL RGB image before
    ``transform``); ``label_names`` from the meta file.
    """

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        coarse: bool = False,
        transform: Transform | None = None,
        *,
        variant: Literal["cifar10", "cifar100"] | None = None,
    ) -> None:
        self.transform = transform
        self.train = train
        self.variant, directory = self._locate(_require_dir(root, "CIFAR root"), variant)
        if coarse and self.variant == "cifar10":
            raise ValueError("coarse labels exist only for CIFAR-100")
        self.coarse = coarse
        if self.variant == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            meta_file, names_key, labels_key = "batches.meta", "label_names", "labels"
        else:
            files = ["train" if train else "test"]
            meta_file = "meta"
            names_key = "coarse_label_names" if coarse else "fine_label_names"
            labels_key = "coarse_labels" if coarse else "fine_labels"
        meta_path = directory / meta_file
        meta = _load_cifar_pickle(meta_path)
        raw_names = _cifar_field(meta, names_key, meta_path)
        self.label_names = [
            n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names
        ]
        arrays, labels = [], []
        for name in files:
            path = directory / name
            batch = _load_cifar_pickle(path)
            data = np.asarray(_cifar_field(batch, "data", path))
            batch_labels = np.asarray(_cifar_field(batch, labels_key, path), dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise TaskDataError(
                    path,
                    f"expected uint8 of shape (N, 3072), got {data.dtype} {data.shape}",
                    field="data",
                )
            if batch_labels.shape != (data.shape[0],):
                raise TaskDataError(
                    path,
                    f"{batch_labels.shape[0]} labels for {data.shape[0]} images",
                    field=labels_key,
                )
            if batch_labels.size and not (
                0 <= batch_labels.min() and batch_labels.max() < len(self.label_names)
            ):
                raise TaskDataError(
                    path,
                    f"labels outside 0..{len(self.label_names) - 1} ({meta_file} has {len(self.label_names)} names)",
                    field=labels_key,
                )
            arrays.append(data)
            labels.append(batch_labels)
        self.data = np.concatenate(arrays).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.labels = np.concatenate(labels)
        self.directory = directory
        _require_samples(len(self.labels), f"CIFAR {'train' if train else 'test'} in {directory}")

    @staticmethod
    def _locate(root: Path, variant: str | None) -> tuple[str, Path]:
        layouts = {
            "cifar10": ("cifar-10-batches-py", "batches.meta"),
            "cifar100": ("cifar-100-python", "meta"),
        }
        if variant is not None and variant not in layouts:
            raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
        found = []
        for name, (subdir, meta) in layouts.items():
            if variant not in (None, name):
                continue
            for directory in (root / subdir, root):
                if (directory / meta).is_file():
                    found.append((name, directory))
                    break
        if not found:
            expected = " or ".join(f"{subdir}/{meta}" for subdir, meta in layouts.values())
            raise FileNotFoundError(f"no CIFAR data in {root}: expected {expected}")
        if len(found) > 1:
            raise ValueError(f"{root} holds both CIFAR-10 and CIFAR-100: pass variant=")
        return found[0]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def classes(self) -> list[str]:
        return self.label_names

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": int(self.labels[index]), "index": index}

    def __repr__(self) -> str:
        return f"Cifar({self.variant}, train={self.train}, size={len(self)})"


# ------------------------------------------------------------------------- ImageFolder
class ImageFolderDataset(ImageFolder):
    """torchvision's ``ImageFolder`` (``root/<class>/<image>``) with dict samples
    ``{"image", "label", "index"}`` and images passed through :func:`to_rgb`."""

    def __init__(self, root: str | Path, transform: Transform | None = None) -> None:
        super().__init__(str(root), transform=transform, loader=_open_rgb)

    @property
    def label_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return {"image": image, "label": label, "index": int(index)}


def _open_rgb(path: str) -> Image.Image:
    return _load_image(Path(path), "ImageFolder sample")


def image_folder(root: str | Path, transform: Transform | None = None) -> ImageFolderDataset:
    """An :class:`ImageFolderDataset` over ``root``, with specific errors for a missing root,
    a root without class directories, and class directories without images."""
    root = _require_dir(root, "image folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no samples: it holds no class directories")
    extensions = tuple(e.lower() for e in IMG_EXTENSIONS)
    empty = [
        c
        for c in classes
        if not any(
            p.is_file() and p.name.lower().endswith(extensions) for p in (root / c).rglob("*")
        )
    ]
    if empty:
        raise ValueError(
            f"image folder {root}: class directories {empty} have no samples "
            f"(no files ending in {', '.join(IMG_EXTENSIONS)})"
        )
    return ImageFolderDataset(root, transform)
