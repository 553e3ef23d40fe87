"""The benchmark library (flava_zoo.bench.timing / speed / speed_report), the provenance and
JSON-lines helpers, and smoke runs of benchmarks/speed.py, profile_model.py and gpu.sh."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flava_zoo import _provenance
from flava_zoo._jsonl import JSONLError, read_jsonl
from flava_zoo.bench import speed, timing
from flava_zoo.bench.speed_report import BACKBONE_HEADER, render_markdown, write_report

ONE_THREAD = True
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- timer


def test_interleave_rotates_the_order_and_skips_warmup():
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    times = timing.interleave(fns, warmup=1, reps=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)
    with pytest.raises(ValueError, match="at least one"):
        timing.interleave({})


def test_interleave_budget_cuts_rounds_but_keeps_min_reps():
    import time

    times = timing.interleave({"slow": lambda: time.sleep(0.02)}, warmup=1, reps=50, budget_s=0.01, min_reps=2)
    assert len(times["slow"]) == 2


def test_summarize_and_paired_ratio():
    s = timing.summarize([0.1, 0.3, 0.2])
    assert s["ms_median"] == 200.0 and s["ms_min"] == 100.0 and s["spread"] == 1.0
    assert s["ms_all"] == [100.0, 300.0, 200.0]
    assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    with pytest.raises(ValueError):
        timing.paired_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        timing.summarize([])


def test_matmul_peak_and_memory_rise():
    peak = timing.matmul_peak(torch.float32, [64, 128])
    assert peak["gflops"] > 0 and set(peak["by_size"]) == {"64", "128"}
    mem = timing.peak_rss_rise(lambda: torch.ones(64 * 2**20 // 4).sum())
    assert mem["peak_mib"] >= 32 and mem["method"]


def test_in_child_runs_in_a_fresh_interpreter():
    assert timing.in_child("os:getpid", {}) != os.getpid()
    with pytest.raises(RuntimeError, match="exit code"):
        timing.in_child("os:no_such_function", {})


# ----------------------------------------------------------------------------- FLOPs on flava-tiny


def test_flop_counting_on_flava_tiny_and_sdpa_kernels():
    import flava_zoo

    cfg = flava_zoo.get_config("flava-tiny")
    x = speed.make_inputs(cfg, 2, 77)
    assert x["input_ids"].shape == (2, cfg.text.max_position_embeddings)  # capped at 64 positions
    ours = speed.build_backbone("flava_zoo", "flava-tiny")

    def loss(m, v):
        return speed.backbone_loss("flava_zoo", m, v)

    total, by_op = timing.flop_counts(lambda: speed.forward_backward(loss, ours, x, "cpu", "fp32"))
    forward = timing.count_flops(lambda: speed._inference(loss, ours, x, "cpu", "fp32", grad=True))
    assert 2 * forward < total < 4 * forward  # backward ~ twice the forward
    assert speed.sdpa_kernels(by_op) == ["flash_cpu"]
    assert speed.sdpa_kernels({"aten.mm": 10}) == ["math"]
    useful = speed._useful_flops(ours, x)
    assert 0 < useful < total  # the padding is not useful work


# ----------------------------------------------------------------------------- provenance, JSONL


def test_machine_record_names_cpu_flags_threads_and_torch():
    info = _provenance.machine("cpu")
    cpu = info["cpu"]
    assert cpu["model"] and cpu["logical_cpus"] >= 1
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"):
        assert isinstance(cpu[flag], bool)
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    line = _provenance.describe_machine(info)
    assert cpu["model"] in line and "torch" in line
    assert "4 logical CPUs" in _provenance.describe_machine({"cpu": "Old CPU", "cores": 4})


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_and_dirty(tmp_path):
    assert _provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
    assert _provenance.git_commit(tmp_path / "missing") is None
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    (tmp_path / "f").write_text("1")
    for cmd in (["init", "-q"], ["add", "f"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, env=env)
    state = _provenance.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "f").write_text("2")
    assert _provenance.git_state(tmp_path)["dirty"] is True


def test_config_hash_is_the_one_canonical_hash():
    from flava_zoo.evaluation import results

    assert results.config_hash is _provenance.config_hash
    assert len(_provenance.config_hash({"a": 1})) == _provenance.CONFIG_HASH_DIGITS == 12
    assert _provenance.config_hash({"a": 1, "b": Path("/x")}) == _provenance.config_hash({"b": "/x", "a": 1})


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": 2})]
    path.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(JSONLError, match=r"r\.jsonl, line 2: expected a JSON object, got list"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(JSONLError, match=r"line 2: not valid UTF-8 \(byte 0xff\)"):
        list(read_jsonl(path))
    with pytest.raises(FileNotFoundError):
        list(read_jsonl(tmp_path / "none.jsonl"))


def test_task_reader_keeps_its_error_type(tmp_path):
    from flava_zoo.data.tasks import TaskDataError
    from flava_zoo.data.tasks import read_jsonl as task_read_jsonl

    path = tmp_path / "t.jsonl"
    path.write_text("[]\n")
    with pytest.raises(TaskDataError, match=r"t\.jsonl, line 1: expected a JSON object"):
        list(task_read_jsonl(path))


# ----------------------------------------------------------------------------- report writer


def _fake_report() -> dict:
    ok = {"size": "flava-tiny", "precision": "fp32", "status": "ok", "parameters": 2_000_000,
          "forward_flops_per_sample": 10**8, "train_flops_per_sample": 3 * 10**8, "peak_mib": 40.0,
          "forward": timing.summarize([0.01, 0.012]), "train": timing.summarize([0.05, 0.06]),
          "throughput_samples_per_s": 181.8, "train_tflops": 0.01, "frac_peak_own": 0.3, "frac_peak_useful": 0.2}
    versus = {"train_speedup": 1.4, "forward_speedup": 1.7, "memory_ratio": 0.6, "flops_ratio": 0.5}
    return {
        "command": "python benchmarks/speed.py --smoke", "git": {"commit": "abc", "dirty": True},
        "started": "then", "finished": "now", "duration_s": 3.0, "caption_lengths": [24, 13],
        "machine": _provenance.machine("cpu"), "load_average_end": [1.0, 1.0, 1.0],
        "settings": {"device": "cpu", "batch": 2, "text_length": 77, "reps": 1, "warmup": 0, "isolate": False},
        "versions": {"flava_zoo": "0", "transformers": "1", "torchmultimodal": "not installed"},
        "matmul_peak": {"fp32": {"gflops": 100.0, "by_size": {"128": 100.0}}}, "matmul_peak_at_end": {"fp32": 99.0},
        "backbone": [dict(ok, implementation="flava_zoo", ours_vs={"transformers": versus}),
                     dict(ok, implementation="transformers", ours_vs_this=versus),
                     {"size": "flava-tiny", "precision": "bf16", "implementation": "flava_zoo",
                      "status": "not measured: no bf16 units"}],
        "pretrain": [], "data": [], "notes": ["a note"],
    }


def test_report_writer_writes_json_and_markdown(tmp_path):
    report = _fake_report()
    json_path, md_path = write_report(report, tmp_path / "out" / "speed")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    md = md_path.read_text()
    assert md == render_markdown(report)
    assert BACKBONE_HEADER in md and "1.40x / 1.70x, 0.60" in md and "(reference)" in md
    assert "not measured: no bf16 units" in md and "with uncommitted changes" in md
    assert "`python benchmarks/speed.py --smoke`" in md and "- a note" in md


# ----------------------------------------------------------------------------- thin scripts


def _check_consistent(report: dict) -> None:
    """The figures of one measurement agree wherever they appear."""
    peak = report["matmul_peak"]["fp32"]["gflops"]
    rows = {r["implementation"]: r for r in report["backbone"] if r["precision"] == "fp32"}
    assert rows["torchmultimodal"]["status"] == "not installed"
    batch = report["settings"]["batch"]
    for impl in ("flava_zoo", "transformers"):
        r = rows[impl]
        assert r["status"] == "ok" and r["peak_mib"] is not None
        assert math.isclose(r["throughput_samples_per_s"], batch / (r["forward"]["ms_median"] / 1e3), rel_tol=1e-2)
        achieved = r["train_flops"] / (r["train"]["ms_median"] / 1e3)
        assert math.isclose(r["frac_peak_own"], achieved / (peak * 1e9), rel_tol=1e-2, abs_tol=1e-4)
    assert rows["flava_zoo"]["ours_vs"]["transformers"] == rows["transformers"]["ours_vs_this"]
    ok = [r for r in report["pretrain"] if r["status"] == "ok"]
    assert {"flava_zoo", "transformers"} <= {r["implementation"] for r in ok}
    # each data row names the step it compares with (size, precision, batch: bf16 rows follow
    # the fp32 ones on CPUs with bf16 units); its rate is that step's
    steps = {f"{r['size']} {r['precision']} pretraining step, batch {r['batch']}": r
             for r in ok if r["implementation"] == "flava_zoo"}  # fmt: skip
    for row in report["data"]:
        assert row["model_samples_per_s"] == steps[row["model"]]["samples_per_s"] and row["workers_needed"] >= 1


def test_speed_script_smoke(tmp_path, load_benchmark):
    script = load_benchmark("speed")
    threads = torch.get_num_threads()
    report = script.main(["--smoke", "--in-process", "--threads", "1", "--out", str(tmp_path / "speed")])
    assert torch.get_num_threads() == threads
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["command"].startswith("python benchmarks/speed.py --smoke")
    assert data["git"]["commit"] is None or len(data["git"]["commit"]) == 40
    _check_consistent(data)
    bf16 = [r for r in data["backbone"] if r["precision"] == "bf16"]
    if not speed.bf16_units("cpu"):
        assert bf16 and all(r["status"] == "not measured: no bf16 units" for r in bf16)
    md = (tmp_path / "speed.md").read_text()
    assert "## Pretraining step" in md and "## Data loading" in md


def test_profile_model_script(capsys, load_benchmark):
    load_benchmark("profile_model").main(["--size", "flava-tiny", "--batch", "2", "--threads", "1", "--rows", "5"])
    assert "Self CPU" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_cpu_smoke_and_fail_fast(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    out = tmp_path / "speed_gpu"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_name("speed_gpu.json").read_text())
    assert data["title"] == "Speed on GPU (smoke)"
    compiled = [r for r in data["pretrain"] if r["implementation"] == "flava_zoo+compile"]
    assert compiled and compiled[0]["status"] == "ok" and compiled[0]["sdpa"] == ["compiled"]
    ours = next(r for r in data["pretrain"] if r["implementation"] == "flava_zoo")
    assert ours["flash_only"] and ours["sdpa"]
    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "torch.cuda.is_available() is False" in proc.stderr
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--bogus"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option" in proc.stderr
