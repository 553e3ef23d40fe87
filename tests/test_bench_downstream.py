"""The downstream table as a suite (``benchmarks/suites/downstream_shapes.yaml``): its dry run
lists exactly the runs of both columns (the pretrained export and random init), and a tiny
real run of one fine-tuning task writes the Markdown table with the chance column."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
import yaml

from flava_zoo.bench import parse_suite
from flava_zoo.bench.cli import main as bench_main
from flava_zoo.bench.report import build
from flava_zoo.bench.runner import plan, run_suite
from flava_zoo.evaluation.results import read_results

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suites" / "downstream_shapes.yaml"

ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""

ROWS = ["probe_shape", "zeroshot_shape", "zeroshot_tr", "zeroshot_ir", "vqa", "visual_entailment", "memes_auroc",
        "memes_accuracy", "caption_entailment"]  # fmt: skip
RUNS = ["probe_shape", "zeroshot_shape", "zeroshot_tr + zeroshot_ir", "vqa", "visual_entailment",
        "memes_auroc + memes_accuracy", "caption_entailment"]  # fmt: skip


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import flava_zoo

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pretrained") / "export"
    return flava_zoo.save_pretrained(flava_zoo.create_model("flava-tiny"), folder)


def test_dry_run_lists_exactly_the_runs_of_both_columns(export, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no quickstart_out here: its column is skipped, named
    assert bench_main(["run", "downstream_shapes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("model not on disk: quickstart_out/config.json") == len(ROWS)
    assert out.count("model not on disk: runs/shapes_long/config.json") == len(ROWS)
    assert [line.split("would run random_init x ", 1)[1].rstrip(":") for line in out.splitlines()
            if "would run" in line] == RUNS  # fmt: skip

    assert bench_main(["run", "downstream_shapes", "--dry-run", "--models", "quickstart,random_init",
                       "--source", f"quickstart={export}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    labels = [line.split("would run ", 1)[1].rstrip(":") for line in out.splitlines() if "would run" in line]
    assert labels == [f"{m} x {r}" for m in ("quickstart", "random_init") for r in RUNS]
    assert f"--model.init_args.model={export.resolve()}" in out and "--model.init_args.model=flava-tiny-shapes" in out
    vqa = next(line for line in out.splitlines() if "flava-zoo fit" in line and "shapes_vqa" in line)
    for option in ("--trainer.callbacks.init_args.every_n_train_steps=600", "--data.init_args.train_size=19200",
                   "--data.init_args.batch_size=32", "--data.init_args.test_size=1000"):  # fmt: skip
        assert option in vqa
    assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_run_writes_the_table_with_random_init_and_chance(export, tmp_path):
    raw = yaml.safe_load(SUITE.read_text())
    raw.update(results=str(tmp_path / "results.jsonl"), leaderboard=str(tmp_path / "downstream"),
               work_dir=str(tmp_path / "work"))  # fmt: skip
    raw["models"] = [m for m in raw["models"] if m["name"] != "shapes_long"]
    raw["models"][0].update(source=str(export), requires=[str(export / "config.json")])
    tiny = ["--trainer.max_steps=2", "--data.init_args.train_size=8", "--data.init_args.val_size=4",
            "--data.init_args.test_size=16", "--data.init_args.batch_size=4", "--trainer.limit_val_batches=0",
            "--model.init_args.warmup_steps=1"]  # fmt: skip
    for task in raw["tasks"]:
        task["overrides"] = [*task.get("overrides", []), *tiny]
    suite = parse_suite(raw, SUITE).select(tasks=["memes_auroc", "memes_accuracy"])
    assert [j.label for j in plan(suite).jobs] == ["quickstart x memes_auroc + memes_accuracy",
                                                   "random_init x memes_auroc + memes_accuracy"]  # fmt: skip
    summary = run_suite(suite)
    assert summary.ok and summary.ran == 2
    records = read_results(tmp_path / "results.jsonl")
    assert {(r.model, r.task, r.metric) for r in records} >= {
        (m, t, metric) for m in ("quickstart", "random_init")
        for t, metric in (("memes_auroc", "auroc"), ("memes_accuracy", "accuracy"))
    }  # fmt: skip
    output = build(suite, chart=False)
    md = output.markdown
    assert md.startswith("# Shapes-world downstream tasks: pretrained vs random init")
    assert "| group | task | metric (%) | `quickstart` | `random_init` | chance |" in md
    row = next(line for line in md.splitlines() if "| memes_auroc |" in line)
    assert row.rstrip().endswith("| 50.0 |")
    assert "average" not in md.split("## Models")[0].split("| group |")[1]  # tasks alone, no averages
    rows = list(csv.reader(io.StringIO(output.paths["csv"].read_text())))
    assert rows[0][5:] == ["quickstart", "quickstart_low", "quickstart_high", "quickstart_n", "random_init",
                           "random_init_low", "random_init_high", "random_init_n", "chance"] and len(rows) == 3  # fmt: skip
