"""Shipped recipes: addressable by name, listed by ``flava-zoo recipes``, a missing earlier stage
named, the learning rate monitored in every training recipe, and one way to run a recipe that
the benchmark runner uses without importing the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flava_zoo import shipped
from flava_zoo.cli import main
from flava_zoo.recipe_cli import CommandError, resolve_configs, run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))


def test_names_resolve_to_the_shipped_files():
    assert shipped.recipes_dir().resolve() == (ROOT / "recipes").resolve()  # a checkout reads its own folder
    image = ROOT / "recipes" / "pretrain" / "shapes_image.yaml"
    for name in ("shapes_image", "pretrain/shapes_image", "pretrain/shapes_image.yaml", "recipes/pretrain/shapes_image.yaml"):
        assert shipped.find_recipe(name).resolve() == image.resolve(), name
    assert shipped.find_recipe("probe/shapes_classification").parent.name == "probe"
    with pytest.raises(shipped.ShippedNotFound, match="ambiguous: finetune/shapes_classification, probe/"):
        shipped.find_recipe("shapes_classification")
    with pytest.raises(shipped.ShippedNotFound, match="did you mean shapes_image"):
        shipped.find_recipe("shapes_imag")
    recipes = shipped.list_recipes()
    assert sorted(r.path.resolve() for r in recipes) == sorted(p.resolve() for p in RECIPES)
    assert len({r.name for r in recipes}) == len(recipes)
    assert all(shipped.find_recipe(r.name) == r.path for r in recipes)  # every listed name works
    assert shipped.find_suite("shapes").name == "shapes.yaml"


def test_resolve_configs_rewrites_names_only(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("seed_everything: 1\n")
    argv = ["fit", "--config", "shapes_vqa", f"--config={own}", "-c", "pretrain/shapes_text", "--trainer.max_steps=2"]
    out = resolve_configs(argv)
    assert out[2] == str(shipped.find_recipe("shapes_vqa")) and out[3] == f"--config={own}"
    assert out[5] == str(shipped.find_recipe("pretrain/shapes_text")) and out[-1] == "--trainer.max_steps=2"
    assert resolve_configs(["fit", "--config", "{trainer: {max_steps: 1}}"])[2] == "{trainer: {max_steps: 1}}"
    with pytest.raises(CommandError, match="no shipped recipe of that name"):
        resolve_configs(["fit", "--config", "nope"])


def test_recipes_command_lists_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RECIPES)
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["shapes_image"].split()[1:3] == ["pretrain:", "image"]
    assert "Stage 1 of 3" in by_name["shapes_image"]
    assert by_name["shapes_vqa"].split()[1:4] == ["finetune:", "vqa", "(shapes)"]
    assert "probe/shapes_classification" in by_name and "zeroshot/shapes_retrieval" in by_name


def test_missing_earlier_stage_names_the_recipe_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_recipe("fit", "shapes_multimodal") == 1
    err = capsys.readouterr().err
    assert "runs/shapes_text/export does not exist: run `flava-zoo fit --config shapes_text` first" in err
    assert main(["fit", "--config", "nope"]) == 1
    assert "`flava-zoo recipes` lists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="subcommand"):
        run_recipe("train", "shapes_image")


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent.name in ("pretrain", "finetune")],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")  # fmt: skip
def test_training_recipes_monitor_the_learning_rate(path):
    """First the LearningRateMonitor, last the one ModelCheckpoint (the callback that
    --trainer.callbacks.init_args.* options and the benchmark runner set)."""
    callbacks = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
    classes = [c["class_path"].rsplit(".", 1)[-1] for c in callbacks]
    assert classes[0] == "LearningRateMonitor" and classes[-1] == "ModelCheckpoint"
    assert classes.count("ModelCheckpoint") == 1
    assert yaml.safe_load(path.read_text())["trainer"].get("logger", True) is not False


def test_bench_runner_does_not_import_the_command_line():
    code = ("import sys, flava_zoo.bench.runner, flava_zoo.bench.cli, flava_zoo.bench.report; "
            "assert 'flava_zoo.cli' not in sys.modules, 'flava_zoo.cli imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    source = (ROOT / "flava_zoo" / "bench" / "runner.py").read_text()
    assert "from ..recipe_cli import run_lightning" in source and "..cli" not in source
