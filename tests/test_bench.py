"""Benchmark suites and leaderboards: the aggregation arithmetic on known records, the suite
format's checks and keys, and a tiny suite run end to end (2 models x 2 tasks), resumed."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import lightning  # noqa: F401 - imported here, not inside the first cell's timing
import pytest
import yaml

from flava_zoo.bench import aggregate, cell_key, load_suite, parse_suite
from flava_zoo.bench.cli import main as bench_main
from flava_zoo.bench.leaderboard import to_csv, to_markdown_table
from flava_zoo.bench.runner import plan, run_suite, runs_log_path
from flava_zoo.bench.suite import SuiteError, TaskSpec
from flava_zoo.evaluation.results import ResultRecord, read_results

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "benchmarks" / "suites"


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def record(model: str, task: str, metric: str, value: float, key: str = "k", when: str = "2025-01-01T00:00:00+00:00",
           split: str = "test", unit: str = "%") -> ResultRecord:  # fmt: skip
    return ResultRecord(model=model, model_source="test", task=task, split=split, metric=metric, value=value,
                        num_samples=10, config_hash=key, package_version="0", git_commit=None, timestamp=when,
                        unit=unit)  # fmt: skip


TASKS = [
    TaskSpec("probe", "vision", "accuracy"),
    TaskSpec("probe2", "vision", "accuracy"),
    TaskSpec("glue", "language", "accuracy"),
    TaskSpec("vqa", "multimodal", "vqa_accuracy"),
    TaskSpec("memes", "multimodal", "auroc"),
    TaskSpec("ir", "multimodal", "text_to_image_R@1"),
]


# ------------------------------------------------------------------------- aggregation
def test_aggregation_arithmetic_on_known_records():
    records = [  # every record is in percent
        record("a", "probe", "accuracy", 50.0),
        record("a", "probe2", "accuracy", 75.0),
        record("a", "glue", "accuracy", 25.0),
        record("a", "vqa", "vqa_accuracy", 50.0),
        record("a", "memes", "auroc", 100.0),
        record("a", "ir", "text_to_image_R@1", 12.0),
        record("a", "ir", "text_to_image_R@5", 99.0),  # not the headline metric
        record("b", "probe", "accuracy", 12.5),
        record("b", "probe2", "accuracy", 37.5),
        record("b", "glue", "accuracy", 50.0),
        record("b", "vqa", "vqa_accuracy", 25.0),
        record("b", "memes", "auroc", 50.0),
        record("b", "ir", "text_to_image_R@1", 6.0),
    ]
    board = aggregate(records, ["a", "b"], TASKS)
    assert board.scores[("a", "probe")].value == 50.0
    assert board.scores[("a", "ir")].value == 12.0
    assert board.group_averages[("a", "vision")].value == 62.5  # (50 + 75) / 2
    assert board.group_averages[("a", "language")].value == 25.0
    assert board.group_averages[("a", "multimodal")].value == 54.0  # (50 + 100 + 12) / 3
    assert board.overall["a"].value == pytest.approx((62.5 + 25.0 + 54.0) / 3, abs=1e-12)  # 47.1666...
    assert board.group_averages[("b", "vision")].value == 25.0  # (12.5 + 37.5) / 2
    assert board.group_averages[("b", "multimodal")].value == 27.0  # (25 + 50 + 6) / 3
    assert board.overall["b"].value == 34.0  # (25 + 50 + 27) / 3: the mean of the groups, not of the tasks
    assert board.groups == ["vision", "language", "multimodal"]


def test_aggregation_keys_latest_record_and_missing_tasks():
    keys = {(m, t.name): f"{m}-{t.name}" for m in ("a", "b") for t in TASKS}
    records = [record("a", t.name, t.metric, 50.0, keys[("a", t.name)]) for t in TASKS]
    records += [
        record("a", "probe", "accuracy", 90.0, "stale"),  # another configuration: ignored
        record("a", "glue", "accuracy", 75.0, keys[("a", "glue")], when="2025-02-01T00:00:00+00:00"),  # newer: wins
        record("b", "probe", "accuracy", 50.0, keys[("b", "probe")]),
        record("b", "probe2", "accuracy", 100.0, keys[("b", "probe2")]),
        record("b", "glue", "accuracy", 50.0, keys[("b", "glue")]),
        record("b", "vqa", "vqa_accuracy", 25.0, keys[("b", "vqa")]),
    ]
    board = aggregate(records, ["a", "b"], TASKS, keys, notes={("b", "memes"): "failed: no fusion"})
    assert board.scores[("a", "probe")].value == 50.0
    assert board.scores[("a", "glue")].value == 75.0
    assert board.overall["a"].value == pytest.approx((50 + 75 + 50) / 3)
    assert board.scores[("b", "memes")].value is None and board.scores[("b", "memes")].note == "failed: no fusion"
    assert board.scores[("b", "ir")].note == "not run"
    assert board.group_averages[("b", "vision")].value == 75.0
    assert board.group_averages[("b", "multimodal")].value is None  # strict: a task is missing
    assert board.overall["b"].value is None

    partial = aggregate(records, ["a", "b"], TASKS, keys, partial=True)
    mm = partial.group_averages[("b", "multimodal")]
    assert (mm.value, mm.count, mm.expected, mm.partial) == (25.0, 1, 3, True)
    assert partial.overall["b"].value == pytest.approx((75 + 50 + 25) / 3) and partial.overall["b"].partial
    assert not partial.overall["a"].partial

    table = to_markdown_table(partial)
    assert "| vision | probe | accuracy | 50.0 | 50.0 |" in table
    assert "| language | glue | accuracy | **75.0** | 50.0 |" in table
    assert "| multimodal | memes | auroc | 50.0 | n/a |" in table
    assert "| multimodal | *multimodal average* |  | **50.0** | 25.0* |" in table
    other = aggregate([record("a", "probe", "accuracy", 0.5, unit="fraction")], ["a"], TASKS[:1])
    assert other.scores[("a", "probe")].value is None  # another unit is not mixed in
    assert "unit 'fraction'" in other.scores[("a", "probe")].note
    assert table.splitlines()[0].startswith("| group | task | metric (%) |")
    rows = list(csv.reader(io.StringIO(to_csv(partial))))
    assert rows[0] == ["group", "task", "metric", "split", "unit", "a", "a_low", "a_high", "a_n",
                       "b", "b_low", "b_high", "b_n"]  # fmt: skip
    assert ["multimodal", "memes", "auroc", "test", "%", "50", "", "", "1", "", "", "", ""] in rows
    assert rows[-1][:2] == ["all", "macro average"] and rows[-1][9].endswith("*")


# ------------------------------------------------------------------------------ suites
def _suite_dict(tmp: Path) -> dict:
    return {
        "name": "tiny",
        "results": str(tmp / "results.jsonl"),
        "leaderboard": str(tmp / "leaderboard"),
        "work_dir": str(tmp / "work"),
        "overrides": ["--data.init_args.test_size=8", "--data.init_args.batch_size=4"],
        "models": [
            {"name": "random", "source": "flava-tiny"},
            {
                "name": "pretrained",
                "pretrain": {
                    "stages": ["multimodal"],
                    "overrides": {"fusion": "merged"},
                    "loss_weights": {"contrastive": 1, "itm": 1, "mmm_image": 0, "mmm_text": 0},
                    "steps": {"multimodal": 1},
                    "batch_size": 4,
                    "args": ["--data.init_args.train_size=8", "--data.init_args.val_size=4"],
                },
            },
        ],
        "tasks": [
            {"name": "retrieval", "group": "multimodal", "recipe": "recipes/zeroshot/shapes_retrieval.yaml",
             "metric": "image_to_text_R@1"},
            {"name": "entailment", "group": "language", "recipe": "recipes/finetune/shapes_caption_entailment.yaml",
             "metric": "accuracy",
             "overrides": ["--trainer.max_steps=2", "--data.init_args.train_size=8", "--trainer.limit_val_batches=0",
                           "--model.init_args.warmup_steps=1"]},
        ],
    }  # fmt: skip


def _write(tmp: Path, data: dict) -> Path:
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["tasks"][0].update(group="audio"), "tasks[0].group"),
        (lambda d: d["tasks"][1].update(recipe="recipes/nope.yaml"), "tasks[1].recipe"),
        (lambda d: d["tasks"][1].update(overrides="--trainer.max_steps=2"), "tasks[1].overrides"),
        (lambda d: d["tasks"][1].update(overrides=["trainer.max_steps=2"]), "tasks[1].overrides"),
        (lambda d: d["tasks"][0].update(mode="train"), "tasks[0].mode"),
        (lambda d: d["tasks"][1].update(name="retrieval"), "tasks[1].name"),
        (lambda d: d["models"][0].update(pretrain={"steps": {}}), "models[0]"),
        (lambda d: d["models"][1]["pretrain"].update(stages=["multimodal", "image"]), "models[1].pretrain.stages"),
        (lambda d: d["models"][1]["pretrain"]["steps"].update(multimodal=0), "models[1].pretrain.steps.multimodal"),
        (lambda d: d["models"][1]["pretrain"].update(steps={"image": 2}), "models[1].pretrain.steps"),
        (lambda d: d["models"][1]["pretrain"].update(loss_weights={"itm": -1}), "models[1].pretrain.loss_weights.itm"),
        (lambda d: d["models"][1].update(colour="red"), "models[1].colour"),
        (lambda d: d.update(name="has space"), "name"),
    ],
)
def test_suite_errors_name_the_file_and_field(tmp_path, change, field):
    data = _suite_dict(tmp_path)
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(SuiteError, match="^" + re.escape(f"{path}: {field}: ")):
        load_suite(path)


def test_keys_share_unimodal_stages_and_follow_the_spec(tmp_path):
    suite = load_suite(SUITES / "shapes.yaml")
    by_name = {m.name: m for m in suite.models}
    merged, co, none = (by_name[n].pretrain for n in ("merged", "co_attention", "none"))
    assert [s.key for s in merged.stages[:2]] == [s.key for s in co.stages[:2]] == [s.key for s in none.stages[:2]]
    assert len({merged.final.key, co.final.key, none.final.key}) == 3
    assert by_name["merged_no_unimodal"].pretrain.final.previous is None
    assert [t.mode for t in suite.tasks] == ["test", "fit_test", "fit_test", "fit_test", "fit_test", "test", "test",
                                             "test", "test", "test"]  # fmt: skip
    assert [t.probe for t in suite.tasks[-3:]] == ["interactions", "relevance", "compositional"]
    assert suite.seeds == (0, 1, 2) and suite.baseline == "merged"
    tr, ir = suite.task("zeroshot_tr"), suite.task("zeroshot_ir")
    assert cell_key(by_name["merged"], tr) == cell_key(by_name["merged"], ir)  # one run serves both

    data = _suite_dict(tmp_path)
    before = parse_suite(data, tmp_path / "suite.yaml")
    data["tasks"][1]["overrides"].append("--model.init_args.lr=1e-3")
    after = parse_suite(data, tmp_path / "suite.yaml")
    assert before.tasks[0].key == after.tasks[0].key and before.tasks[1].key != after.tasks[1].key
    assert before.models[1].key == after.models[1].key


def test_shipped_suites_parse():
    shapes = load_suite(SUITES / "shapes.yaml")
    assert [m.name for m in shapes.models] == [
        "merged", "co_attention", "none", "merged_late_fusion", "merged_no_unimodal", "merged_contrastive",
        "merged_itm", "merged_full", "frozen_text", "text_stage", "noisy", "noisy_filtered", "random_init"]  # fmt: skip
    assert shapes.name == "shapes"  # not a loop variable's last value
    m = {x.name: x for x in shapes.models}
    # the late-fusion row reuses merged's pretraining, but is a model of its own
    assert m["merged_late_fusion"].pretrain.final.key == m["merged"].pretrain.final.key
    keys = shapes.cell_keys()
    assert keys[("merged_late_fusion", "memes", 0)] != keys[("merged", "memes", 0)] and m["none"].late_fusion
    assert keys[("merged_late_fusion", "interaction_share", 0)] != keys[("merged", "interaction_share", 0)]
    assert ("merged_late_fusion", "probe_shape", 0) not in keys  # its other cells would be merged's
    # every pretrained model but the one without unimodal stages shares merged's text stage
    text_key = m["merged"].pretrain.stages[1].key
    shared = [x.name for x in shapes.models if x.pretrain and any(s.key == text_key for s in x.pretrain.stages)]
    assert set(shared) == {x.name for x in shapes.models if x.pretrain} - {"merged_no_unimodal"}
    assert m["text_stage"].tasks == ("caption_entailment",) and m["text_stage"].pretrain.final.stage == "text"
    assert m["noisy_filtered"].pretrain.final.filter.by_stage.key == m["noisy"].pretrain.final.key
    assert "--data.init_args.caption_noise=0.3" in m["noisy_filtered"].pretrain.final.args
    assert "--model.init_args.freeze=[text]" in m["frozen_text"].pretrain.final.args
    assert m["merged_full"].pretrain.final.loss_weights["mim"] == m["merged_full"].pretrain.final.loss_weights["mlm"] == 1
    assert shapes.groups == ["vision", "language", "multimodal"]
    paper = load_suite(SUITES / "flava-paper.yaml", data_root="/nonexistent")
    assert paper.groups == ["vision", "language", "multimodal"]
    assert all(t.missing_data() for t in paper.tasks)  # nothing of it on this disk
    work = plan(paper)
    assert not work.jobs and len(work.skipped) == len(paper.models) * len(paper.tasks)


# --------------------------------------------------------------------------- end to end
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_suite_runs_resumes_and_builds(tmp_path, capsys):
    path = _write(tmp_path, _suite_dict(tmp_path))
    assert bench_main(["run", str(path), "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert "start  pretrain pretrained: multimodal stage" in out and "start  random x entailment" in out

    suite = load_suite(path)
    records = read_results(tmp_path / "results.jsonl")
    cells = {(r.model, r.task) for r in records}
    assert cells == {(m, t) for m in ("random", "pretrained") for t in ("retrieval", "entailment")}
    for r in records:
        assert r.config_hash == cell_key(suite.model(r.model), suite.task(r.task))
    assert any("fine-tuned" in r.model_source for r in records if r.task == "entailment")
    assert all(r.model_source.endswith("export") for r in records if r.model == "pretrained" and r.task == "retrieval")

    assert all(r.unit == "%" for r in records)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| language | entailment | accuracy |" in md and "*macro average*" in md and "Commit:" in md
    assert "Wall time:" in md and "Machine:" in md
    rows = list(csv.reader(io.StringIO((tmp_path / "leaderboard.csv").read_text())))
    by_task = {row[1]: row for row in rows}
    value = next(r.value for r in records if r.model == "random" and r.task == "entailment" and r.metric == "accuracy")
    assert by_task["entailment"][4] == "%"
    assert float(by_task["entailment"][5]) == pytest.approx(value, rel=1e-5)  # records are in percent already
    retrieval = float(by_task["retrieval"][9])  # per model: mean, low, high, n
    entail = float(by_task["entailment"][9])
    assert float(by_task["macro average"][9]) == pytest.approx((retrieval + entail) / 2, rel=1e-5)

    # a second run finds every cell finished and runs nothing
    summary = run_suite(suite)
    assert (summary.ran, summary.skipped_done) == (0, 4)
    assert len(read_results(tmp_path / "results.jsonl")) == len(records)
    log = [json.loads(line) for line in runs_log_path(tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(log) == 1 and {e["status"] for e in log[0]["work"]} == {"ok"} and log[0]["command"]

    # a changed task reruns that task's cells only; the finished stage is reused
    data = _suite_dict(tmp_path)
    data["tasks"][1]["overrides"].append("--model.init_args.lr=1e-3")
    work = plan(parse_suite(data, path))
    assert sorted(j.label for j in work.jobs) == ["pretrained x entailment", "random x entailment"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_failed_cell_is_na_with_its_reason_and_retried(tmp_path):
    data = _suite_dict(tmp_path)
    data["models"] = data["models"][:1]
    data["tasks"][1]["overrides"].append("--model.init_args.no_such_option=1")
    path = _write(tmp_path, data)
    assert bench_main(["run", str(path), "--no-chart"]) == 1
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| language | entailment | accuracy | n/a |" in md
    assert "`random` x `entailment`: flava-zoo fit: command-line error" in md
    assert (tmp_path / "work" / "cells" / "random" / "entailment" / "log.txt").is_file()
    work = plan(load_suite(path))
    assert [j.label for j in work.jobs] == ["random x entailment"]  # failures are retried


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc (Linux)")
@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_the_run_and_its_workers(tmp_path, jobs):
    """``kill`` stops a run: a parallel one with its worker processes (they would train on,
    orphaned), an in-process one without starting the next job (Lightning catches the
    interrupt inside a fit and exits on its own)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = _suite_dict(tmp_path)
    data["models"] = [data["models"][1], json.loads(json.dumps(data["models"][1]))]
    data["models"][0]["pretrain"]["steps"]["multimodal"] = 100_000  # runs until stopped
    data["models"][1].update(name="second")
    data["models"][1]["pretrain"]["steps"]["multimodal"] = 100_001
    path = _write(tmp_path, data)
    log = tmp_path / "out.txt"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "flava_zoo.bench", "run", str(path), "--jobs", str(jobs),
                                 "--no-build"], stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "start  pretrain" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        workers = _children(proc.pid) if jobs > 1 else set()
        assert workers or jobs == 1, "no worker processes"
        time.sleep(4 if jobs == 1 else 2)  # inside the fit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143  # SIGTERM's status, as a killed training run's
        assert "Traceback" not in log.read_text()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{w}").exists() and "zombie" not in Path(f"/proc/{w}/status").read_text().lower()
                  for w in workers) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()
                 and "zombie" not in Path(f"/proc/{w}/status").read_text().lower()]  # fmt: skip
        assert not alive, f"workers still running after SIGTERM: {alive}"
        assert "interrupted: finished cells are kept" in log.read_text()
        assert log.read_text().count("start  pretrain") == jobs  # nothing started after the signal
        runs = [json.loads(line) for line in runs_log_path(tmp_path / "results.jsonl").read_text().splitlines()]
        assert runs[-1]["finished"] is False
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in locals().get("workers", ()):
            with contextlib.suppress(OSError):
                os.kill(w, signal.SIGKILL)
