"""Smoke test of benchmarks/model_speed.py: one tiny run, in process, checks the report's fields."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")





def test_caption_lengths_are_fixed_and_realistic(load_benchmark):
    model_speed = load_benchmark("model_speed")
    lengths = model_speed.caption_lengths(8, 77)
    assert lengths == model_speed.caption_lengths(8, 77)
    assert all(8 <= n <= 30 for n in lengths)
    many = model_speed.caption_lengths(2000, 77, seed=1)
    assert 12 <= sum(many) / len(many) <= 16


def test_peer_config_matches_our_sizes(load_benchmark):
    import flava_zoo

    model_speed = load_benchmark("model_speed")
    cfg = flava_zoo.get_config("flava-tiny")
    hf = model_speed.hf_config(cfg)
    assert hf.image_config.hidden_size == cfg.image.hidden_size
    assert hf.image_config.num_hidden_layers == cfg.image.num_layers
    assert hf.image_config.patch_size == cfg.image.patch_size
    assert hf.text_config.vocab_size == cfg.text.vocab_size
    assert hf.multimodal_config.num_hidden_layers == cfg.multimodal.num_layers
    assert hf.text_config.hidden_dropout_prob == 0.0
    assert hf.projection_dim == cfg.projection_dim


def test_model_speed_tiny_run_writes_report(tmp_path, load_benchmark):
    import torch

    model_speed = load_benchmark("model_speed")
    out = tmp_path / "speed"
    threads = torch.get_num_threads()
    try:
        report = model_speed.main(
            [
                "--sizes",
                "flava-tiny",
                "--precisions",
                "fp32",
                "--batch",
                "2",
                "--reps",
                "1",
                "--warmup",
                "0",
                "--peak-sizes",
                "128",
                "--threads",
                "1",
                "--in-process",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data == json.loads(json.dumps(report))
    for key in ("command", "git_commit", "environment", "inputs", "matmul_peak", "results"):
        assert key in data
    assert data["matmul_peak"]["fp32"]["gflops"] > 0
    (row,) = data["results"]
    assert row["size"] == "flava-tiny" and row["precision"] == "fp32" and row["status"] == "ok"
    assert row["useful_flops"] > 0
    for impl in ("ours", "peer"):
        r = row[impl]
        for key in (
            "ms_median",
            "peak_mib",
            "flops",
            "tflops_own",
            "frac_peak_own",
            "frac_peak_useful",
        ):
            assert key in r
        assert r["ms_median"] > 0 and r["flops"] > 0
    # the peer computes the padded text, ours does not
    assert row["peer"]["flops"] > row["ours"]["flops"] >= row["useful_flops"]
    assert row["speed_ratio"] > 0 and row["speed_ratio_paired_median"] > 0
    assert row["alongside"]["gflops_median"] > 0 and row["alongside"]["ours_frac_useful"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| flava-tiny | fp32 |" in md

    # --resume keeps measured rows instead of measuring them again
    try:
        again = model_speed.main(
            [
                "--sizes",
                "flava-tiny",
                "--precisions",
                "fp32",
                "--batch",
                "2",
                "--peak-sizes",
                "128",
                "--threads",
                "1",
                "--in-process",
                "--resume",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert again["results"] == data["results"]



def test_speed_tiny_run_writes_table(tmp_path, load_benchmark):
    import torch

    import flava_zoo

    speed = load_benchmark("speed")
    out = tmp_path / "speed"
    threads = torch.get_num_threads()
    try:
        report = speed.main(
            [
                "--sizes",
                "flava-tiny",
                "--batch",
                "2",
                "--reps",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--in-process",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.with_suffix(".json").read_text())
    assert data == json.loads(json.dumps(report))
    for key in ("command", "git_commit", "git_dirty", "machine", "settings", "started", "finished"):
        assert key in data
    assert data["settings"]["device"] == "cpu" and data["settings"]["precision"] == "fp32"
    assert data["settings"]["batch"] == 2 and data["settings"]["text_length"] == 77
    assert data["machine"]["cpu"]["model"] and data["complete"]
    rows = {r["implementation"]: r for r in data["rows"]}
    assert set(rows) == {"flava_zoo", "transformers", "torchmultimodal"}
    expected = sum(p.numel() for p in flava_zoo.create_model("flava-tiny").parameters())
    assert rows["flava_zoo"]["parameters"] == expected
    for impl in ("flava_zoo", "transformers"):
        r = rows[impl]
        assert r["size"] == "flava-tiny" and r["status"] == "ok"
        assert r["forward_ms_median"] > 0 and r["train_ms_median"] > 0
        assert r["throughput_samples_per_s"] > 0
        assert r["forward_flops_per_sample"] > 0 and r["train_flops_per_sample"] > 0
        assert r["parameters"] > 0 and r["peak_mib"] is not None
    if not speed.torchmultimodal_available():
        assert rows["torchmultimodal"]["status"] == "not installed"
    (ratio,) = [q for q in data["ratios"] if q["against"] == "transformers"]
    assert ratio["forward_speedup"] > 0 and ratio["train_speedup"] > 0
    md = out.with_suffix(".md").read_text()
    assert "speedup (peer/ours)" in md
    assert "| flava-tiny | transformers |" in md and "| flava-tiny | flava_zoo |" in md
