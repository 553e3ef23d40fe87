"""Results records: one JSON line per (model, task, split, metric), appended, never truncated."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

import flava_zoo
from flava_zoo.evaluation.results import (
    ResultRecord,
    append_results,
    config_hash,
    git_commit,
    make_records,
    read_results,
)

FIELDS = [
    "model", "model_source", "task", "split", "metric", "value", "num_samples",
    "config_hash", "package_version", "git_commit", "timestamp", "unit", "hyperparameters", "lineage",
    "interval",
]  # fmt: skip


def _record(**overrides: object) -> ResultRecord:
    values: dict[str, object] = {
        "model": "flava-tiny",
        "model_source": "zoo:flava-tiny.shapes",
        "task": "glue/mrpc",
        "split": "dev",
        "metric": "f1",
        "value": 87.5,
        "num_samples": 408,
        "config_hash": "0123456789ab",
        "package_version": "0.1.0",
        "git_commit": None,
        "timestamp": "2025-01-02T03:04:05+00:00",
    }
    values.update(overrides)
    return ResultRecord(**values)  # type: ignore[arg-type]


def test_record_has_exactly_the_documented_fields() -> None:
    assert [f.name for f in dataclasses.fields(ResultRecord)] == FIELDS


def test_config_hash_is_canonical() -> None:
    @dataclasses.dataclass
    class Cfg:
        lr: float
        root: Path

    a = config_hash({"b": 1, "a": [1, 2], "cfg": Cfg(1e-3, Path("/data"))})
    b = config_hash({"cfg": {"root": "/data", "lr": 1e-3}, "a": [1, 2], "b": 1})
    assert a == b and len(a) == 12 and int(a, 16) >= 0
    assert config_hash({"b": 1}) != config_hash({"b": 2})
    assert config_hash({"x": 1}) == hashlib.sha256(b'{"x":1}').hexdigest()[:12]
    with pytest.raises(TypeError, match="cannot serialise object"):
        config_hash({"x": object()})


def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None  # not a repository: no crash
    assert git_commit(tmp_path / "missing") is None
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    try:
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
        subprocess.run(
            ["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env
        )
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            check=True,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    assert git_commit(repo) == head and len(head) == 40


def test_make_records_fill_provenance(tmp_path: Path) -> None:
    records = make_records(
        {"accuracy": 80.0, "f1": 90.0}, model="flava-tiny", model_source="ckpt/last.ckpt",
        task="glue/mrpc", split="dev", num_samples=408, config={"lr": 1e-3}, repo=tmp_path,
    )  # fmt: skip
    assert [r.metric for r in records] == ["accuracy", "f1"]
    first = records[0]
    assert first.config_hash == config_hash({"lr": 1e-3})
    assert first.package_version == flava_zoo.__version__ and first.git_commit is None
    moment = datetime.fromisoformat(first.timestamp)
    assert moment.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 60
    assert records[1].timestamp == first.timestamp
    assert all(r.unit == "%" and r.hyperparameters == {} and r.lineage == {} for r in records)


def test_append_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "results" / "nested" / "evals.jsonl"
    append_results(path, [_record(), _record(metric="accuracy", value=80.0)])
    append_results(
        path, [_record(task="vqav2", metric="vqa_accuracy", value=50.0, git_commit="a" * 40)]
    )
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and list(json.loads(lines[0])) == FIELDS
    records = read_results(path)
    assert records[0] == _record() and records[2].git_commit == "a" * 40
    append_results(path, [])  # nothing to write is fine
    assert len(read_results(path)) == 3


def test_zero_samples_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match="nothing silently evaluates on zero samples"):
        _record(num_samples=0)
    with pytest.raises(ValueError, match="nothing silently evaluates on zero samples"):
        make_records(
            {"accuracy": 1.0}, model="m", model_source="s", task="t", split="dev", num_samples=0
        )
    with pytest.raises(ValueError, match="value is nan"):
        _record(value=float("nan"))
    with pytest.raises(ValueError, match="not in UTC"):
        _record(timestamp="2025-01-02T03:04:05+02:00")
    with pytest.raises(ValueError, match="not ISO 8601"):
        _record(timestamp="yesterday")
    with pytest.raises(TypeError, match="not a ResultRecord"):
        append_results(path, [_record(), {"model": "m"}])  # type: ignore[list-item]
    assert not path.exists()  # checked before anything is written


def test_append_never_truncates_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_results(path, [_record()])
    with path.open("a") as f:
        f.write('{"model": "crashed mid-wr')  # a writer died here
    append_results(path, [_record(metric="accuracy")])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["metric"] == "accuracy"
    with pytest.raises(ValueError, match=r"r.jsonl, line 2: not valid JSON"):
        read_results(path)


def test_read_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = _record().to_json()
    missing = json.loads(good)
    del missing["num_samples"]
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + json.dumps(missing) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: missing field 'num_samples'"):
        read_results(path)
    path.write_text(json.dumps({**json.loads(good), "extra": 1}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: unexpected field 'extra'"):
        read_results(path)
    path.write_text(json.dumps({**json.loads(good), "num_samples": 0}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: .*zero samples"):
        read_results(path)
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        read_results(tmp_path / "none.jsonl")


def test_unit_hyperparameters_and_lineage_are_written_and_read(tmp_path: Path) -> None:
    lineage = {"checkpoint": "runs/a/last.ckpt", "step": 280, "pretrained": None}
    records = make_records(
        {"accuracy": 81.25}, model="flava-tiny", model_source="ckpt", task="shapes/color",
        split="test", num_samples=16, repo=tmp_path, hyperparameters={"l2": 0.01}, lineage=lineage,
    )  # fmt: skip
    path = tmp_path / "r.jsonl"
    append_results(path, records)
    line = json.loads(path.read_text())
    assert line["unit"] == "%" and line["hyperparameters"] == {"l2": 0.01}
    assert line["lineage"] == lineage
    (back,) = read_results(path)
    assert back == records[0] and back.value == 81.25 and back.hyperparameters["l2"] == 0.01
    hash(back)  # frozen records stay hashable: the dict fields are left out of the hash


def test_unit_and_dict_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="unit must be a non-empty string"):
        _record(unit="")
    with pytest.raises(ValueError, match="hyperparameters must be a dict"):
        _record(hyperparameters=[0.1])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        _record(lineage={"checkpoint": Path("x.ckpt")})
    with pytest.raises(ValueError, match="not a finite number"):
        _record(hyperparameters={"l2": float("inf")})
    with pytest.raises(ValueError, match="not a string"):
        _record(lineage={1: "a"})
    given = {"l2": 0.1}
    record = _record(hyperparameters=given)
    given["l2"] = 5.0  # the record holds its own copy
    assert record.hyperparameters == {"l2": 0.1}


def test_old_records_without_a_unit_are_read_by_the_rule(tmp_path: Path) -> None:
    new = json.loads(_record().to_json())
    old = {k: v for k, v in new.items() if k not in ("unit", "hyperparameters", "lineage")}
    lines = [
        {**old, "metric": "accuracy", "value": 0.8125},
        {**old, "metric": "mcc", "value": -0.25},
        {**old, "metric": "image_to_text_R@1", "value": 42.5},
        {**old, "metric": "text_to_image_R@10", "value": 90.0},
        {**new, "metric": "accuracy", "value": 81.25},  # already percent: unchanged
    ]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_results(path)
    assert [r.value for r in records] == pytest.approx([81.25, -25.0, 42.5, 90.0, 81.25])
    assert all(r.unit == "%" and r.hyperparameters == {} and r.lineage == {} for r in records)
    path.write_text(json.dumps({**old, "extra": 1}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: unexpected field 'extra'"):
        read_results(path)


def test_interval_is_checked_and_round_trips(tmp_path: Path) -> None:
    from flava_zoo.stats import Interval

    interval = Interval(87.5, 84.0, 90.5, n=408, resamples=1000)
    record = _record(interval=interval)
    assert record.interval == {**interval.to_dict()}
    path = tmp_path / "r.jsonl"
    append_results(path, [record, _record()])
    back = read_results(path)
    assert back[0].interval == record.interval and back[1].interval is None
    with pytest.raises(ValueError, match="interval has no 'high'"):
        _record(interval={"estimate": 1.0, "low": 0.0, "level": 0.95, "method": "t", "n": 3})
    with pytest.raises(ValueError, match="low 3.0 is above high 1.0"):
        _record(interval={**interval.to_dict(), "low": 3.0, "high": 1.0})
    with pytest.raises(ValueError, match="unexpected field 'width'"):
        _record(interval={**interval.to_dict(), "width": 2})
    with pytest.raises(ValueError, match="'p' which is not among the metrics|not among the metrics"):
        make_records({"acc": 1.0}, model="m", model_source="s", task="t", split="x",
                     num_samples=3, intervals={"p": interval})
