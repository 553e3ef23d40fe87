"""Smoke test of benchmarks/pretrain_speed.py: one tiny in-process run and its report."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("webdataset")
pytest.importorskip("transformers")





def test_workers_needed_rounds_up(load_benchmark):
    pretrain_speed = load_benchmark("pretrain_speed")
    assert pretrain_speed.workers_needed(100.0, 100.0) == 1
    assert pretrain_speed.workers_needed(100.0, 1000.0) == 1
    assert pretrain_speed.workers_needed(201.0, 100.0) == 3
    assert pretrain_speed.workers_needed(0.3, 0.1) == 3  # 0.3 / 0.1 = 2.9999999999999996
    with pytest.raises(ValueError):
        pretrain_speed.workers_needed(1.0, 0.0)


def test_pretrain_speed_tiny_run_writes_report(tmp_path, load_benchmark):
    import torch

    pretrain_speed = load_benchmark("pretrain_speed")
    out = tmp_path / "pretrain_speed"
    threads = torch.get_num_threads()
    report = pretrain_speed.main(
        [
            "--batch-size", "4",
            "--data-batches", "2",
            "--data-warmup", "1",
            "--model-steps", "1",
            "--model-warmup", "0",
            "--threads", "1",
            "--train-size", "32",
            "--wds-samples", "16",
            "--wds-shards", "2",
            "--peer",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert torch.get_num_threads() == threads

    model = report["model"]
    for name in ("ours", "peer"):
        assert model[name]["samples_per_s"] > 0
        assert model[name]["ms_median"] > 0
        assert model[name]["flops"] > 0
    assert math.isclose(
        model["ours"]["samples_per_s"], 4 / (model["ours"]["ms_median"] / 1000), rel_tol=1e-9
    )
    assert report["speed_ratio"] > 0

    assert [row["source"].split()[0] for row in report["data"]] == ["shapes", "webdataset"]
    for row in report["data"]:
        assert row["samples"] == 8 and row["batches"] == 2
        assert row["samples_per_s"] > 0
        ratio = model["ours"]["samples_per_s"] / row["samples_per_s"]
        assert row["workers_needed"] == max(1, math.ceil(ratio * (1 - 1e-9)))
        assert math.isclose(row["data_over_model"], 1 / ratio)
        assert row["workers_needed_peer"] >= 1
    assert report["data"][1]["shards"]["samples"] == 16

    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["command"].startswith("python benchmarks/pretrain_speed.py --batch-size 4")
    assert saved["git_dirty"] in (True, False, None)
    assert saved["environment"]["cpu"]["logical_cpus"] >= 1
    markdown = out.with_suffix(".md").read_text()
    assert pretrain_speed.FEED_HEADER in markdown
    assert pretrain_speed.STEP_HEADER in markdown
    assert "transformers FlavaForPreTraining" in markdown
