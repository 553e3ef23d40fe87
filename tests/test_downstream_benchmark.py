"""benchmarks/downstream_shapes.py: a two-step run of one recipe on both columns writes the
table, and fine-tuning schedules default to each recipe's own."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
import torch
import yaml

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def test_schedule_defaults_to_the_recipe_and_flags_override(load_benchmark):
    bench = load_benchmark("downstream_shapes")
    recipe = "finetune/shapes_memes.yaml"
    config = yaml.safe_load((bench.RECIPES / recipe).read_text())
    own = (config["trainer"]["max_steps"], config["model"]["init_args"]["warmup_steps"])
    assert bench.schedule(recipe, Namespace(steps=None, warmup=None)) == own
    assert bench.schedule(recipe, Namespace(steps=7, warmup=2)) == (7, 2)


def test_columns_are_labelled_and_checked(tmp_path, load_benchmark):
    bench = load_benchmark("downstream_shapes")
    (tmp_path / "quick").mkdir()
    cols = bench.columns([str(tmp_path / "quick"), f"long={tmp_path / 'quick'}"], "flava-tiny")
    assert list(cols) == ["quick", "long", "random"] and cols["random"] == "flava-tiny"
    with pytest.raises(SystemExit, match="not an exported folder"):
        bench.columns([str(tmp_path / "missing")], "flava-tiny")
    with pytest.raises(SystemExit, match="used twice"):
        bench.columns([f"a={tmp_path / 'quick'}", f"a={tmp_path / 'quick'}"], "flava-tiny")


def test_two_step_run_writes_both_columns(tmp_path, load_benchmark):
    import flava_zoo

    bench = load_benchmark("downstream_shapes")
    torch.manual_seed(0)
    folder = flava_zoo.save_pretrained(flava_zoo.create_model("flava-tiny"), tmp_path / "pretrained")
    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    argv = [
        "--pretrained", f"qs={folder}", "--only", "finetune/shapes_memes.yaml", "--steps", "2",
        "--warmup", "1", "--test-size", "8", "--jobs", "1", "--work", str(tmp_path / "work"),
        "--out", str(out),
    ]  # fmt: skip
    try:
        result = bench.main(argv)
        # --resume keeps what finished: only the deleted random-init run is done again
        kept = bench.results_path(tmp_path / "work", "qs", "finetune/shapes_memes.yaml")
        redone = bench.results_path(tmp_path / "work", "random", "finetune/shapes_memes.yaml")
        stamp = kept.stat().st_mtime_ns
        redone.unlink()
        again = bench.main([*argv, "--resume"])
        assert kept.stat().st_mtime_ns == stamp and redone.is_file()
        assert [r["qs"] for r in again["rows"]] == [r["qs"] for r in result["rows"]]
    finally:
        torch.set_num_threads(threads)
    labels = [row["task"] for row in result["rows"]]
    assert labels == ["Memes-like (AUROC)", "Memes-like (accuracy)"]
    for row in result["rows"]:
        assert 0.0 <= row["qs"] <= 100.0 and 0.0 <= row["random"] <= 100.0  # percent
    assert any(row[c] > 1.0 for row in result["rows"] for c in ("qs", "random"))  # not fractions
    text = out.read_text()
    assert "| task (metric, %) | qs | random init | chance |" in text
    assert "| Memes-like (AUROC) |" in text and "shapes_memes 2 (1)" in text
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == result["rows"]
