"""Evaluation results as JSON lines: one :class:`ResultRecord` per (model, task, split, metric).

Every evaluation appends its records to a results file (``append_results``); the leaderboard
is built from those files (``read_results``). A record carries what is needed to trust and
reproduce the number: the model and where it came from, the number of samples, a hash of the
configuration, the package version, the git commit and the time.

Units: every metric is written in percent (``unit="%"``), as the FLAVA paper's tables are:
accuracy, F1, AUROC, VQA accuracy and R@K in [0, 100]; Matthews correlation and
Pearson / Spearman correlations times 100 (in [-100, 100]), as the GLUE leaderboard shows them.
Each record states its ``unit``. Selected hyperparameters (the linear probe's chosen ``l2``)
are a record's ``hyperparameters``, never a metric; ``lineage`` says where the evaluated
weights came from (checkpoint path, step, pretrained name, ...).

Old records (written before records carried a unit) are read by this rule: a record without
a ``unit`` field is an old record; a metric whose name contains ``R@`` followed by a cut-off
(``image_to_text_R@1``, ``text_to_image_R@10``, ...) was already in percent and is kept;
every other metric was a fraction and is multiplied by 100. The record read gets
``unit="%"``; missing ``hyperparameters`` and ``lineage`` read as ``{}``
(:func:`upgrade_old_record`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._jsonl import read_jsonl
from .._provenance import config_hash, git_commit

__all__ = [
    "PERCENT",
    "ResultRecord",
    "append_results",
    "config_hash",
    "git_commit",
    "make_records",
    "read_results",
    "to_percent",
    "upgrade_old_record",
]

PERCENT = "%"
"""The unit of every metric written now."""


@dataclasses.dataclass(frozen=True)
class ResultRecord:
    """One metric value of one model on one task split.

    ``model_source``: where the weights came from (a zoo name with its tag, a checkpoint path,
    ``facebook/flava-full``, ...). ``timestamp``: ISO 8601 in UTC. ``git_commit`` is ``None``
    outside a git checkout. A record with ``num_samples`` below 1 or a non-finite ``value``
    cannot be made: nothing silently evaluates on zero samples.

    ``unit``: the unit of ``value`` (``"%"`` for every metric written now; see the module
    docstring). ``hyperparameters``: hyperparameters selected during the evaluation (the
    linear probe's ``l2``). ``lineage``: where the evaluated weights came from
    (``{"checkpoint": path, "step": n, "pretrained": name, ...}``). Both are JSON objects with
    string keys and JSON values (finite numbers); they are copied when the record is made.

    ``interval``: the value's confidence interval, ``None`` when none was computed; else a
    :meth:`flava_zoo.stats.Interval.to_dict` object (``estimate``, ``low``, ``high``,
    ``level``, ``method``: ``bootstrap`` over ``n`` test items or ``t`` over ``n`` runs, and
    ``resamples``), in the record's unit (a percentile bootstrap interval of a skewed
    statistic need not contain the value).
    """

    model: str
    model_source: str
    task: str
    split: str
    metric: str
    value: float
    num_samples: int
    config_hash: str
    package_version: str
    git_commit: str | None
    timestamp: str
    unit: str = PERCENT
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    lineage: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    interval: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        for name in (
            "model",
            "model_source",
            "task",
            "split",
            "metric",
            "config_hash",
            "package_version",
            "timestamp",
            "unit",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"ResultRecord.{name} must be a non-empty string, got {value!r}")
        if self.git_commit is not None and not isinstance(self.git_commit, str):
            raise ValueError(
                f"ResultRecord.git_commit must be a string or None, got {self.git_commit!r}"
            )
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int):
            raise ValueError(f"ResultRecord.num_samples must be an int, got {self.num_samples!r}")
        if self.num_samples < 1:
            raise ValueError(
                f"{self.task} {self.split} {self.metric}: num_samples is {self.num_samples}; "
                "nothing silently evaluates on zero samples"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise ValueError(f"ResultRecord.value must be a number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(
                f"{self.task} {self.split} {self.metric}: value is {self.value}, not finite"
            )
        object.__setattr__(self, "value", float(self.value))
        try:
            moment = datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"ResultRecord.timestamp {self.timestamp!r} is not ISO 8601") from e
        if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
            raise ValueError(f"ResultRecord.timestamp {self.timestamp!r} is not in UTC")
        for name in ("hyperparameters", "lineage"):
            object.__setattr__(self, name, _json_object(getattr(self, name), f"ResultRecord.{name}"))
        if self.interval is not None:
            object.__setattr__(self, "interval", _check_interval(self.interval, self))

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, allow_nan=False)


_FIELDS = tuple(f.name for f in dataclasses.fields(ResultRecord))
_OPTIONAL_FIELDS = ("unit", "hyperparameters", "lineage", "interval")  # absent from old records
_INTERVAL_KEYS = ("estimate", "low", "high", "level", "method", "n")


def _check_interval(interval: Any, record: ResultRecord) -> dict[str, Any]:
    """A checked copy of a record's interval (see :class:`ResultRecord`)."""
    where = f"{record.task} {record.split} {record.metric}: interval"
    if hasattr(interval, "to_dict"):
        interval = interval.to_dict()
    data = _json_object(interval, where)
    missing = [k for k in _INTERVAL_KEYS if k not in data]
    if missing:
        raise ValueError(f"{where} has no {missing[0]!r}")
    extra = sorted(set(data) - {*_INTERVAL_KEYS, "resamples"})
    if extra:
        raise ValueError(f"{where} has an unexpected field {extra[0]!r}")
    for key in ("estimate", "low", "high", "level"):
        if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
            raise ValueError(f"{where} {key} must be a number, got {data[key]!r}")
        data[key] = float(data[key])
    if not data["low"] <= data["high"]:
        raise ValueError(f"{where} low {data['low']} is above high {data['high']}")
    if not 0.0 < data["level"] < 1.0:
        raise ValueError(f"{where} level must be in (0, 1), got {data['level']}")
    return data


def to_percent(fractions: Mapping[str, Any]) -> dict[str, float]:
    """``{name: 100 * value}`` as floats: fractions (torchmetrics' accuracy, F1, AUROC, Matthews
    and Pearson / Spearman correlations; tensors or numbers) to the percent records hold."""
    return {name: 100.0 * float(value) for name, value in fractions.items()}


def _json_value(value: Any, where: str) -> Any:
    """A copy of ``value`` if it is plain JSON (finite numbers, string keys), else ValueError."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key {key!r} that is not a string")
            out[key] = _json_value(v, f"{where}[{key!r}]")
        return out
    raise ValueError(f"{where} is a {type(value).__name__} ({value!r}), not JSON-serialisable")


def _json_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a dict, got {value!r}")
    return _json_value(value, where)


_RECALL = re.compile(r"R@\d+")


def upgrade_old_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a results line in today's form; old records are converted by the rule.

    A line without ``unit`` is an old record: a recall metric (``R@K`` in its name, e.g.
    ``image_to_text_R@1``) was already in percent; every other metric was a fraction and its
    value is multiplied by 100. The result has ``unit="%"``; missing ``hyperparameters`` and
    ``lineage`` become ``{}``. A line with a ``unit`` is returned unchanged (as a new dict).
    """
    out = dict(data)
    if "unit" not in out:
        metric, value = out.get("metric"), out.get("value")
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(metric, str) and is_number and not _RECALL.search(metric):
            out["value"] = float(value) * 100.0
        out["unit"] = PERCENT
    out.setdefault("hyperparameters", {})
    out.setdefault("lineage", {})
    out.setdefault("interval", None)
    return out


def _package_version() -> str:
    from flava_zoo.version import __version__

    return __version__


def make_records(
    metrics: Mapping[str, float],
    *,
    model: str,
    model_source: str,
    task: str,
    split: str,
    num_samples: int,
    config: Any = None,
    repo: str | Path | None = None,
    unit: str = PERCENT,
    hyperparameters: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Any] | None = None,
) -> list[ResultRecord]:
    """One :class:`ResultRecord` per entry of ``metrics``, sharing the time stamp, the hash of
    ``config``, this package's version and the git commit of ``repo`` (default: the checkout
    this package was imported from, so the commit names the code that ran wherever the command
    ran; ``None`` for an installed wheel), the ``unit`` of the values (percent unless said otherwise), the selected
    ``hyperparameters`` and the weights' ``lineage``. ``intervals`` maps a metric name to
    its :class:`flava_zoo.stats.Interval` (or its dict); metrics without one get ``None``."""
    if not metrics:
        raise ValueError(f"no metrics to record for {model} on {task} {split}")
    common = {
        "model": model,
        "model_source": model_source,
        "task": task,
        "split": split,
        "num_samples": num_samples,
        "config_hash": config_hash(config),
        "package_version": _package_version(),
        "git_commit": git_commit(repo if repo is not None else Path(__file__).resolve().parent),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "unit": unit,
        "hyperparameters": dict(hyperparameters or {}),
        "lineage": dict(lineage or {}),
    }
    intervals = dict(intervals or {})
    unknown = sorted(set(intervals) - set(metrics))
    if unknown:
        raise ValueError(f"interval for {unknown[0]!r}, which is not among the metrics")
    return [
        ResultRecord(metric=name, value=float(value), interval=intervals.get(name), **common)
        for name, value in metrics.items()
    ]


def append_results(path: str | Path, records: Iterable[ResultRecord]) -> None:
    """Append ``records`` to the JSON-lines file ``path`` (created with its parent directories).

    Every record is checked before anything is written. Each line goes out in one ``write``
    on a descriptor opened with ``O_APPEND``, then is fsynced: concurrent writers do not
    interleave, and a crash loses at most the line being written. What the file held is never
    truncated; if it ends in a torn line, a newline is written first so that the new records
    stay readable.
    """
    records = list(records)
    for i, record in enumerate(records):
        if not isinstance(record, ResultRecord):
            raise TypeError(f"record {i} is a {type(record).__name__}, not a ResultRecord")
    lines = [(record.to_json() + "\n").encode("utf-8") for record in records]
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _ends_without_newline(path):
            os.write(fd, b"\n")
        for line in lines:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
            os.fsync(fd)
    finally:
        os.close(fd)


def _ends_without_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read_results(path: str | Path) -> list[ResultRecord]:
    """The records of a results file; blank lines are skipped, and a malformed line raises a
    ``ValueError`` naming the file, the line and the field.

    Old records (no ``unit``) are read by the rule of :func:`upgrade_old_record`: recall
    (``R@K``) values kept, every other value times 100, ``unit="%"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    records = []
    for number, data in read_jsonl(path):
        data = upgrade_old_record(data)
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise ValueError(f"{path}, line {number}: missing field {missing[0]!r}")
        extra = sorted(set(data) - set(_FIELDS))
        if extra:
            raise ValueError(f"{path}, line {number}: unexpected field {extra[0]!r}")
        try:
            records.append(ResultRecord(**data))
        except ValueError as e:
            raise ValueError(f"{path}, line {number}: {e}") from e
    return records
