"""Same seed, same thread count, one machine, ``--deterministic true``: two quickstart
processes write the same bytes. Without ``--deterministic`` they usually do, not always (one
of three CI runs on 2026-12-02 differed), so that mode is not asserted."""

import hashlib
import json
import os
import subprocess
import sys

from flava_zoo.reproducibility import BLAS_SETTING, reproducible_blas

TINY = ["--image_steps", "2", "--text_steps", "2", "--multimodal_steps", "6", "--batch_size", "16",
        "--eval_pairs", "40", "--threads", "2", "--progress", "false"]  # fmt: skip


def _quickstart(out, env, extra):
    subprocess.run([sys.executable, "-m", "flava_zoo.cli", "quickstart", "--output", str(out), *TINY, *extra],
                   check=True, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    metrics = json.loads((out.parent / (out.name + ".run") / "metrics.json").read_text())
    return weights, metrics


def test_two_deterministic_quickstart_processes_write_the_same_weights_and_metrics(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}  # the package sets it itself
    deterministic = True
    extra = ["--deterministic", "true"]
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
