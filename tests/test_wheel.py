"""The package runs without its checkout: a wheel built from the source tree, installed into a
folder outside it, runs a shipped recipe by name (logging the learning rate) and the shapes
suite's dry run from an empty working directory."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "flava_zoo", "recipes",
                "benchmarks/suites"]  # fmt: skip
"""What the build reads; copied apart so that the build writes nothing into the checkout."""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel, installed with ``pip install --target`` (no network, no build isolation:
    the virtual environment's setuptools builds it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_shipped")
    for name in BUILD_INPUTS:
        src, dst = ROOT / name, source / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
         tmp, env)  # fmt: skip
    (wheel,) = dist.glob("flava_zoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "flava_zoo/_shipped/recipes/pretrain/shapes_image.yaml" in names
    assert "flava_zoo/_shipped/suites/shapes.yaml" in names
    shipped = {n.removeprefix("flava_zoo/_shipped/recipes/") for n in names if n.startswith("flava_zoo/_shipped/recipes/")}
    assert shipped == {str(p.relative_to(ROOT / "recipes")) for p in (ROOT / "recipes").rglob("*.yaml")}
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
         tmp, env)  # fmt: skip
    return site, {**env, "PYTHONPATH": str(site)}


def test_installed_wheel_runs_a_recipe_by_name_and_the_suite_dry_run(installed, tmp_path):
    site, env = installed
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([sys.executable, "-c", "import flava_zoo, flava_zoo.shipped as s; print(flava_zoo.__file__); "
                  "print(s.recipes_dir())"], empty, env).stdout.split()  # fmt: skip
    assert Path(where[0]).resolve().is_relative_to(site.resolve()), where  # the installed copy runs, not the checkout
    assert Path(where[1]).resolve().is_relative_to(site.resolve()), where

    cli = [sys.executable, "-m", "flava_zoo.cli"]
    listing = _run([*cli, "recipes"], empty, env).stdout
    assert any(line.split()[:3] == ["shapes_image", "pretrain:", "image"] for line in listing.splitlines())

    _run([*cli, "fit", "--config", "shapes_image", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
          "--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.logger=CSVLogger", "--trainer.logger.save_dir=logs", "--trainer.logger.name=csv",
          "--trainer.logger.version=0", "--trainer.log_every_n_steps=1"], empty, env)  # fmt: skip
    assert (empty / "runs" / "shapes_image" / "export" / "config.json").is_file()  # the recipe's own paths
    assert (empty / "runs" / "shapes_image" / "checkpoints" / "last.ckpt").is_file()
    with open(empty / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lr_columns = [c for c in rows[0] if c.startswith("lr-AdamW")]
    assert lr_columns, f"no learning rate logged: {list(rows[0])}"  # LearningRateMonitor in the recipe
    assert any(row[lr_columns[0]] for row in rows)

    # the next stage from the same folder finds the export; from another folder it says what to run first
    other = tmp_path / "other"
    other.mkdir()
    missing = subprocess.run([*cli, "fit", "--config", "shapes_text"], cwd=other, env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert missing.returncode == 1
    assert "runs/shapes_image/export does not exist: run `flava-zoo fit --config shapes_image` first" in missing.stderr

    dry = _run([*cli, "bench", "run", "shapes", "--dry-run"], empty, env).stdout
    from flava_zoo.bench import load_suite

    suite = load_suite(ROOT / "benchmarks" / "suites" / "shapes.yaml")
    assert f"suite shapes: {len(suite.models)} models x {len(suite.tasks)} tasks x 3 seeds" in dry
    shipped_recipe = str(site.resolve() / "flava_zoo" / "_shipped" / "recipes" / "pretrain" / "shapes_image.yaml")
    assert f"flava-zoo fit --config {shipped_recipe}" in dry
    assert not (empty / "runs" / "bench").exists()  # a dry run writes nothing
