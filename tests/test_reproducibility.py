"""Same seed, same thread count, one machine: two quickstart processes write the same bytes."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from flava_zoo.reproducibility import BLAS_SETTING, reproducible_blas

TINY = ["--image_steps", "2", "--text_steps", "2", "--multimodal_steps", "6", "--batch_size", "16",
        "--eval_pairs", "40", "--threads", "2", "--progress", "false"]  # fmt: skip


def _quickstart(out, env, extra):
    subprocess.run([sys.executable, "-m", "flava_zoo.cli", "quickstart", "--output", str(out), *TINY, *extra],
                   check=True, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    metrics = json.loads((out.parent / (out.name + ".run") / "metrics.json").read_text())
    return weights, metrics


@pytest.mark.parametrize("deterministic", [False, True])
def test_two_quickstart_processes_write_the_same_weights_and_metrics(tmp_path, deterministic):
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}  # the package sets it itself
    extra = ["--deterministic", "true"] if deterministic else []
    first = _quickstart(tmp_path / "a", env, extra)
    second = _quickstart(tmp_path / "b", env, extra)
    assert first[0] == second[0]
    recall = {k: v for k, v in first[1].items() if "R@" in k}
    assert recall == {k: v for k, v in second[1].items() if "R@" in k}
    assert first[1]["threads"] == 2 and first[1]["deterministic"] is deterministic
    assert first[1]["mkl_cbwr"] == BLAS_SETTING


def test_a_blas_setting_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert reproducible_blas() == "COMPATIBLE"
    monkeypatch.delenv("MKL_CBWR")
    assert reproducible_blas() == BLAS_SETTING
