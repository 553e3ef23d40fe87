"""Training-step speed, peak memory and FLOP efficiency of our FlavaModel against transformers'.

For each named size and precision this runs one forward + backward of the backbone (no
heads) on the same inputs -- ``--batch`` images at the size's resolution and a text batch
padded to ``--text-length`` tokens with COCO-like caption lengths -- through our
``flava_zoo.create_model(size)`` and through ``transformers.FlavaModel`` built from the
same sizes, and reports side by side:

* wall time of the step: ``--warmup`` steps, then the median of ``--reps`` steps, ours and
  the peer's interleaved (alternating which goes first) in one process so that load from
  other processes on the machine hits both alike;
* peak memory of the step: in a fresh process per model, the peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs``) during one step minus the resident
  size just before it (model, inputs and interpreter excluded; gradients included);
* FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one step of each model
  (the work each actually computes: the peer's padded text, our trimmed text), and the
  "useful" FLOPs: our model run sample by sample on only the real tokens. Achieved FLOP/s
  are reported as a fraction of this machine's matmul peak, measured at the start for each
  precision as the best rate of large square matmuls, both with each model's own FLOPs and
  with the common useful FLOPs (the fair one: it does not reward computing padding).

bf16 runs the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (backward
outside), for both models. Where the measured bf16 matmul peak makes a step longer than
``--max-step-seconds`` (CPUs without AVX512-BF16 / AMX run bf16 matmuls far slower than
fp32), that cell is skipped and the estimate recorded.

    python benchmarks/model_speed.py --sizes flava-tiny,flava-small,flava-base \\
        --precisions fp32,bf16 --batch 8 --text-length 77 --reps 5 \\
        --out benchmarks/results/model_speed

writes ``model_speed.md`` and ``model_speed.json``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

MIB = 2**20
PRECISIONS = ("fp32", "bf16")
CLS_ID, SEP_ID, PAD_ID = 1, 2, 0


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean."""
    print(f"[model_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


def caption_lengths(batch: int, text_length: int, seed: int = 0) -> list[int]:
    """Token counts (with [CLS] and [SEP]) of COCO-like captions under a BERT tokenizer.

    A shifted gamma: 8 + Gamma(shape 2, scale 3), mean about 14 tokens, a long right tail,
    clipped to [8, 30] and to ``text_length``. Fixed by ``seed``.
    """
    rng = random.Random(seed)
    draws = [rng.gammavariate(2.0, 3.0) for _ in range(batch)]
    return [min(max(8 + round(x), 8), 30, text_length) for x in draws]


def make_inputs(cfg: Any, batch: int, text_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images, token ids and the padding mask shared by both models.

    The text is padded to ``text_length`` or to the size's ``max_position_embeddings``,
    whichever is shorter (flava-tiny has 64 positions).
    """
    g = torch.Generator().manual_seed(seed)
    text_length = min(text_length, cfg.text.max_position_embeddings)
    size = cfg.image.image_size
    pixel_values = torch.randn(batch, cfg.image.num_channels, size, size, generator=g)
    lengths = caption_lengths(batch, text_length, seed)
    input_ids = torch.full((batch, text_length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros(batch, text_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        input_ids[i, 1 : n - 1] = torch.randint(3, cfg.text.vocab_size, (n - 2,), generator=g)
        input_ids[i, 0], input_ids[i, n - 1] = CLS_ID, SEP_ID
        attention_mask[i, :n] = 1
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


# ----------------------------------------------------------------------------- models


def hf_config(cfg: Any) -> Any:
    """transformers' ``FlavaConfig`` with our config's sizes, dropout off, eager attention."""
    from transformers import FlavaConfig as HFFlavaConfig

    common = {"hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    im, tx, mm = cfg.image, cfg.text, cfg.multimodal
    return HFFlavaConfig(
        image_config=dict(
            common,
            hidden_size=im.hidden_size,
            num_hidden_layers=im.num_layers,
            num_attention_heads=im.num_heads,
            intermediate_size=im.intermediate_size,
            image_size=im.image_size,
            patch_size=im.patch_size,
            num_channels=im.num_channels,
            layer_norm_eps=im.layer_norm_eps,
        ),
        text_config=dict(
            common,
            vocab_size=tx.vocab_size,
            type_vocab_size=tx.type_vocab_size,
            max_position_embeddings=tx.max_position_embeddings,
            pad_token_id=tx.pad_token_id,
            hidden_size=tx.hidden_size,
            num_hidden_layers=tx.num_layers,
            num_attention_heads=tx.num_heads,
            intermediate_size=tx.intermediate_size,
            layer_norm_eps=tx.layer_norm_eps,
        ),
        multimodal_config=dict(
            common,
            hidden_size=mm.hidden_size,
            num_hidden_layers=mm.num_layers,
            num_attention_heads=mm.num_heads,
            intermediate_size=mm.intermediate_size,
            layer_norm_eps=mm.layer_norm_eps,
        ),
        hidden_size=mm.hidden_size,
        projection_dim=cfg.projection_dim,
        init_codebook=False,
    )


def build(impl: str, size: str) -> tuple[torch.nn.Module, Any]:
    """A model in train mode (``impl`` is ``ours`` or ``peer``) and our config of ``size``."""
    import flava_zoo

    cfg = flava_zoo.get_config(size)
    torch.manual_seed(0)
    if impl == "ours":
        model = flava_zoo.create_model(size)
    elif impl == "peer":
        from transformers import FlavaModel as HFFlavaModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HFFlavaModel(hf_config(cfg))
    else:
        raise ValueError(f"unknown implementation {impl!r}; use 'ours' or 'peer'")
    return model.train(), cfg


def loss_of(impl: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One scalar touching every output both forwards produce: the three last hidden states
    and the two normalised class-token embeddings (the peer's are projected here, as ours
    are inside the model)."""
    if impl == "ours":
        out = model(**inputs)
        parts = [
            out.image.last_hidden_state,
            out.text.last_hidden_state,
            out.multimodal.last_hidden_state,
            out.image.embedding,
            out.text.embedding,
        ]
    else:
        out = model(**inputs)
        image_emb = F.normalize(model.image_projection(out.image_embeddings[:, 0]), dim=-1)
        text_emb = F.normalize(model.text_projection(out.text_embeddings[:, 0]), dim=-1)
        parts = [
            out.image_embeddings,
            out.text_embeddings,
            out.multimodal_embeddings,
            image_emb,
            text_emb,
        ]
    return sum(p.float().mean() for p in parts)


def train_step(
    impl: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor], precision: str
) -> None:
    """Gradients cleared, forward (under bf16 autocast if asked), backward."""
    model.zero_grad(set_to_none=True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with amp:
        loss = loss_of(impl, model, inputs)
    loss.backward()


# ----------------------------------------------------------------------------- FLOPs


def _register_cpu_sdpa_flops() -> None:
    """FlopCounterMode knows the GPU SDPA kernels only; count the CPU flash kernel alike."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        fc.register_flop_formula(fwd, get_raw=True)(fc.sdpa_flop)
    if bwd is not None and bwd not in fc.flop_registry:
        fc.register_flop_formula(bwd, get_raw=True)(fc.sdpa_backward_flop)


def count_flops(fn: Any) -> int:
    """FLOPs of the matmuls, convolutions and attention that ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def useful_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of our model on the real tokens only: each sample alone, its padding cut off."""
    total = 0
    for j in range(inputs["input_ids"].shape[0]):
        n = int(inputs["attention_mask"][j].sum())
        one = {
            "pixel_values": inputs["pixel_values"][j : j + 1],
            "input_ids": inputs["input_ids"][j : j + 1, :n],
            "attention_mask": inputs["attention_mask"][j : j + 1, :n],
        }
        total += count_flops(lambda o=one: train_step("ours", model, o, "fp32"))
    return total


def flops_task(size: str, batch: int, text_length: int) -> dict[str, Any]:
    """FLOPs of one step of each model, and the useful FLOPs."""
    result: dict[str, Any] = {}
    for impl in ("ours", "peer"):
        model, cfg = build(impl, size)
        inputs = make_inputs(cfg, batch, text_length)
        result[impl] = count_flops(lambda m=model, i=impl, x=inputs: train_step(i, m, x, "fp32"))
        result[f"{impl}_parameters"] = sum(p.numel() for p in model.parameters())
        if impl == "ours":
            result["useful"] = useful_flops(model, inputs)
        del model
    return result


# ----------------------------------------------------------------------------- timing and memory


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in %."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    match = re.search(r"some avg10=([\d.]+)", text)
    return float(match.group(1)) if match else None


def time_task(
    size: str,
    precision: str,
    batch: int,
    text_length: int,
    warmup: int,
    reps: int,
    min_reps: int = 2,
    budget_s: float | None = None,
    ref_size: int | None = None,
) -> dict[str, Any]:
    """Both models in one process; steps interleaved, the order alternating per repetition.

    With ``budget_s``, the repetitions are cut (to no fewer than ``min_reps``) so that the
    timed steps take about ``budget_s`` at the warm-up's pace. Besides wall time, each step
    records the CPU time the process got, as a share of ``threads x wall``: far below 1,
    other processes took the cores. With ``ref_size``, each repetition also times one
    ``ref_size`` square matmul in the step's precision: the matmul rate under the same load.
    """
    impls = ("ours", "peer")
    built = {impl: build(impl, size) for impl in impls}
    models = {impl: model for impl, (model, _) in built.items()}
    inputs = make_inputs(built["ours"][1], batch, text_length)
    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    shares: dict[str, list[float]] = {impl: [] for impl in impls}
    ref_gflops: list[float] = []
    if ref_size:
        g = torch.Generator().manual_seed(ref_size)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = (torch.randn(ref_size, ref_size, generator=g).to(dtype) for _ in range(2))
        torch.mm(a, b)
    pressure = [cpu_pressure()]
    r, warm_pair = 0, 0.0
    while True:
        timed = r >= warmup
        if timed and len(times["ours"]) >= reps:
            break
        if timed and ref_size:
            t0 = time.perf_counter()
            torch.mm(a, b)
            ref_gflops.append(2 * ref_size**3 / (time.perf_counter() - t0) / 1e9)
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            w0, c0 = time.perf_counter(), time.process_time()
            train_step(impl, models[impl], inputs, precision)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if timed:
                times[impl].append(wall)
                shares[impl].append(cpu / (wall * threads))
            else:
                warm_pair += wall
        if not timed and r == warmup - 1 and budget_s:
            reps = max(min_reps, min(reps, int(budget_s // max(warm_pair / warmup, 1e-9))))
        label = f"rep {len(times['ours'])}/{reps}" if timed else "warm-up"
        log(
            f"  {size} {precision} {label}: "
            + ", ".join(f"{i} {times[i][-1]:.3f}s" for i in impls if timed and times[i])
            + (f"{warm_pair:.3f}s for both" if not timed else "")
        )
        r += 1
    pressure.append(cpu_pressure())
    return {
        "times_s": times,
        "cpu_share": shares,
        "cpu_pressure_start_end": pressure,
        "ref_size": ref_size,
        "ref_gflops": ref_gflops,
    }


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_task(
    size: str, precision: str, impl: str, batch: int, text_length: int, flops: bool = False
) -> dict[str, Any]:
    """Peak RSS increase over one step, measured on the first step after the model is built.

    With ``flops``, the worker then also counts the FLOPs of a step (and, for ours, the
    useful FLOPs), saving a model build.
    """
    import resource

    model, cfg = build(impl, size)
    inputs = make_inputs(cfg, batch, text_length)
    reset = _reset_peak_rss()
    base_kib = _proc_status_kib("VmRSS")
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_step(impl, model, inputs, precision)
    if reset:
        peak_kib = _proc_status_kib("VmHWM")
        method = "VmHWM after clear_refs reset"
    else:
        peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base_peak)
        method = "ru_maxrss (an overestimate if the build peaked higher)"
    result: dict[str, Any] = {
        "peak_mib": (peak_kib - base_kib) / 1024,
        "baseline_rss_mib": base_kib / 1024,
        "method": method,
    }
    if flops:
        result["flops"] = count_flops(lambda: train_step(impl, model, inputs, "fp32"))
        result["parameters"] = sum(p.numel() for p in model.parameters())
        if impl == "ours":
            result["useful"] = useful_flops(model, inputs)
    return result


# ----------------------------------------------------------------------------- matmul peak


def matmul_peak(dtype: torch.dtype, sizes: list[int], max_seconds: float = 3.0) -> dict[str, Any]:
    """Best GFLOP/s of square ``n x n`` matmuls; sizes whose estimated time exceeds
    ``max_seconds`` per matmul (at the best rate so far) are skipped."""
    by_size: dict[str, float] = {}
    skipped: list[int] = []
    best = 0.0
    for n in sorted(sizes):
        flops = 2 * n**3
        if best and flops / (best * 1e9) > max_seconds:
            skipped.append(n)
            continue
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        t0 = time.perf_counter()
        torch.mm(a, b)
        first = time.perf_counter() - t0
        reps = 1 if first > max_seconds else 3
        best_t = first
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best_t = min(best_t, time.perf_counter() - t0)
        rate = flops / best_t / 1e9
        by_size[str(n)] = round(rate, 2)
        best = max(best, rate)
    return {"gflops": round(best, 2), "by_size": by_size, "skipped_sizes": skipped}


# ----------------------------------------------------------------------------- environment


def cpu_info() -> dict[str, Any]:
    """CPU model name and the flags that decide bf16 matmul speed."""
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        model = m.group(1).strip() if m else model
        f = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def git_commit() -> str:
    """Short commit of the checkout the benchmark runs in (the current directory)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() or "uncommitted"
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def git_dirty() -> bool | None:
    """Whether tracked files of the checkout differ from the commit (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.stdout.strip())


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- orchestration

TASKS = {"flops": flops_task, "time": time_task, "memory": memory_task}


def serve_worker(spec: str, tasks: dict[str, Any] | None = None) -> None:
    """The ``--worker`` side of :func:`run_task`: run the JSON ``spec``'s task from ``tasks``
    (by default this script's) and print its result as one JSON line."""
    spec_ = json.loads(spec)
    result = (TASKS if tasks is None else tasks)[spec_["task"]](**spec_["kwargs"])
    print(json.dumps(result), flush=True)


def run_task(
    task: str,
    kwargs: dict[str, Any],
    threads: int,
    in_process: bool,
    script: str | Path = __file__,
    tasks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a task in a fresh interpreter (isolated memory, no state carried over), or here.

    ``script`` is the benchmark whose ``--worker`` entry runs the task and ``tasks`` its task
    table (by default this script's own).
    """
    if in_process:
        return (TASKS if tasks is None else tasks)[task](**kwargs)
    cmd = [
        sys.executable,
        str(Path(script).resolve()),
        "--worker",
        json.dumps({"task": task, "kwargs": kwargs}),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task} {kwargs} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _previous_rows(
    path: Path, batch: int, text_length: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an earlier report at ``path`` measured with the same batch and text length."""
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    if report.get("inputs", {}).get("batch") != batch:
        return {}
    if report.get("inputs", {}).get("text_length") != text_length:
        return {}
    return {(r["size"], r["precision"]): r for r in report.get("results", [])}


def _ref_size(peak: dict[str, Any]) -> int | None:
    """The square size that reached the peak, capped at 2048 (a fraction of a second)."""
    if not peak["by_size"]:
        return None
    best = max(peak["by_size"], key=peak["by_size"].get)
    return min(int(best), 2048)


def summarise(
    size: str,
    precision: str,
    flops: dict[str, Any],
    timing: dict[str, Any],
    memory: dict[str, dict[str, Any]],
    peak_gflops: float,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "size": size,
        "precision": precision,
        "status": "ok",
        "useful_flops": flops["useful"],
        "peak_gflops": peak_gflops,
    }
    for impl in ("ours", "peer"):
        ts = timing["times_s"][impl]
        median = statistics.median(ts)
        row[impl] = {
            "ms_median": round(median * 1e3, 1),
            "ms_min": round(min(ts) * 1e3, 1),
            "ms_all": [round(t * 1e3, 1) for t in ts],
            "peak_mib": round(memory[impl]["peak_mib"], 1),
            "baseline_rss_mib": round(memory[impl]["baseline_rss_mib"], 1),
            "parameters": flops[f"{impl}_parameters"],
            "flops": flops[impl],
            "tflops_own": round(flops[impl] / median / 1e12, 4),
            "tflops_useful": round(flops["useful"] / median / 1e12, 4),
            "frac_peak_own": round(flops[impl] / median / (peak_gflops * 1e9), 4),
            "frac_peak_useful": round(flops["useful"] / median / (peak_gflops * 1e9), 4),
            "cpu_share_median": round(statistics.median(timing["cpu_share"][impl]), 3),
        }
    row["speed_ratio"] = round(row["peer"]["ms_median"] / row["ours"]["ms_median"], 3)
    pairs = zip(timing["times_s"]["peer"], timing["times_s"]["ours"])
    row["speed_ratio_paired_median"] = round(statistics.median(p / o for p, o in pairs), 3)
    row["speed_ratio_of_minima"] = round(row["peer"]["ms_min"] / row["ours"]["ms_min"], 3)
    row["cpu_pressure_start_end"] = timing["cpu_pressure_start_end"]
    if timing.get("ref_gflops"):
        ref = statistics.median(timing["ref_gflops"])
        row["alongside"] = {"matmul_size": timing["ref_size"], "gflops_median": round(ref, 2)}
        for impl in ("ours", "peer"):
            median = row[impl]["ms_median"] / 1e3
            row["alongside"][f"{impl}_frac_own"] = round(flops[impl] / median / (ref * 1e9), 4)
            row["alongside"][f"{impl}_frac_useful"] = round(
                flops["useful"] / median / (ref * 1e9), 4
            )
    peer_mib = row["peer"]["peak_mib"]
    row["memory_ratio"] = round(row["ours"]["peak_mib"] / peer_mib, 3) if peer_mib > 0 else None
    row["memory_method"] = memory["ours"]["method"]
    return row


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    env, inp = report["environment"], report["inputs"]
    lines = [
        "# Training-step speed: flava-zoo vs transformers `FlavaModel`",
        "",
        f"Forward + backward of the backbone, batch {inp['batch']}, text padded to "
        f"{inp['text_length']} tokens (caption lengths {inp['caption_lengths']}, "
        f"longest {max(inp['caption_lengths'])}), images at each size's resolution. "
        "Ours: `flava_zoo.create_model(size)`; peer: `transformers.FlavaModel` at the same "
        "sizes (eager attention, the only one it supports), dropout 0, train mode, same inputs.",
        "",
        "| size | precision | ours ms | peer ms | speed (peer/ours) | ours peak MiB | peer peak MiB "
        "| memory (ours/peer) | ours TFLOP/s | ours % peak (own / useful) | peer TFLOP/s "
        "| peer % peak (own / useful) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(
                f"| {row['size']} | {row['precision']} | skipped: {row['reason']} |" + " |" * 10
            )
            continue
        o, p = row["ours"], row["peer"]
        lines.append(
            f"| {row['size']} | {row['precision']} | {o['ms_median']:.0f} | {p['ms_median']:.0f} "
            f"| {row['speed_ratio']:.2f}x | {o['peak_mib']:.0f} | {p['peak_mib']:.0f} "
            f"| {_ratio(row['memory_ratio'])} | {o['tflops_own']:.3f} "
            f"| {100 * o['frac_peak_own']:.0f}% / {100 * o['frac_peak_useful']:.0f}% "
            f"| {p['tflops_own']:.3f} | {100 * p['frac_peak_own']:.0f}% / {100 * p['frac_peak_useful']:.0f}% |"
        )
    lines += [
        "",
        "GFLOPs per step (FlopCounterMode; useful = ours on real tokens only, sample by sample):",
        "",
        "| size | ours | peer | useful |",
        "|---|---:|---:|---:|",
    ]
    seen = set()
    for row in report["results"]:
        if row["status"] == "ok" and row["size"] not in seen:
            seen.add(row["size"])
            lines.append(
                f"| {row['size']} | {row['ours']['flops'] / 1e9:.1f} | {row['peer']['flops'] / 1e9:.1f} "
                f"| {row['useful_flops'] / 1e9:.1f} |"
            )
    alongside = [r for r in report["results"] if r["status"] == "ok" and "alongside" in r]
    if alongside:
        lines += [
            "",
            "Against the matmul rate measured alongside the steps (one square matmul per "
            "repetition, same load), and how much of the CPU the steps got:",
            "",
            "| size | precision | matmul GFLOP/s (size) | ours % (own / useful) "
            "| peer % (own / useful) | paired speed ratio | CPU share ours / peer "
            "| CPU pressure start / end |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in alongside:
            a = r["alongside"]
            lines.append(
                f"| {r['size']} | {r['precision']} | {a['gflops_median']:.1f} ({a['matmul_size']}) "
                f"| {100 * a['ours_frac_own']:.0f}% / {100 * a['ours_frac_useful']:.0f}% "
                f"| {100 * a['peer_frac_own']:.0f}% / {100 * a['peer_frac_useful']:.0f}% "
                f"| {r['speed_ratio_paired_median']:.2f}x "
                f"| {r['ours']['cpu_share_median']:.2f} / {r['peer']['cpu_share_median']:.2f} "
                f"| {r['cpu_pressure_start_end'][0]} / {r['cpu_pressure_start_end'][1]} |"
            )
    peaks = report["matmul_peak"]
    lines += [
        "",
        "Matmul peak (best of square matmuls, "
        f"{env['threads']} threads): "
        + ", ".join(
            f"{k} {v['gflops']:.1f} GFLOP/s (by size {v['by_size']})" for k, v in peaks.items()
        )
        + (
            "; at the end: "
            + ", ".join(f"{k} {v['gflops']:.1f}" for k, v in report["matmul_peak_at_end"].items())
            if report.get("matmul_peak_at_end")
            else ""
        ),
        "",
        "How to read it: times are the median of the measured repetitions (min and all in the "
        "JSON), ours and the peer interleaved in one process. Peak memory is the rise of the "
        "resident set (VmHWM, reset just before the step) over one step in a fresh process per "
        "model: activations, gradients and temporaries, not weights. % peak divides achieved "
        "FLOP/s by the matmul peak of that precision; 'own' uses the model's own counted FLOPs "
        "(the peer's include its padded text), 'useful' the common real-token FLOPs (the fair "
        "comparison). The paired speed ratio is the median over repetitions of peer/ours "
        "within a repetition. CPU share is process CPU time / (threads x wall) per step; CPU "
        "pressure is Linux PSI 'some avg10' (% of time a runnable task waited for a CPU): "
        "high values mean other processes competed for the cores.",
        "",
        f"- command: `{report['command']}`",
        f"- git commit: {report['git_commit']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}",
        f"- CPU: {env['cpu']['model']}, {env['cpu']['logical_cpus']} logical CPUs, torch threads "
        f"{env['threads']}, capability {env['cpu']['torch_cpu_capability']}, AVX512-BF16 "
        f"{env['cpu']['avx512_bf16']}, AMX-BF16 {env['cpu']['amx_bf16']}",
        f"- load average at start {env['load_average_start']}, at end {env['load_average_end']} "
        "(other processes share this machine; timings are noisy)",
        f"- {report['duration_s']:.0f} s in all, {report['timestamp']}",
    ]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    if not report.get("complete", True):
        lines.append("- partial: the run has not finished (or was interrupted); rows so far")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        default="flava-tiny,flava-small,flava-base",
        help="comma-separated registered model names",
    )
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, of fp32 and bf16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-length", type=int, default=77)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per model")
    p.add_argument(
        "--reps-base",
        type=int,
        default=None,
        help="timed repetitions for flava-base and larger (default: --reps)",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--cell-seconds",
        type=float,
        default=240.0,
        help="cut the repetitions of a (size, precision) so its timed steps take about this "
        "long at the warm-up's pace (at least 2 repetitions)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--peak-sizes",
        default="1024,2048,3072,4096",
        help="square matmul sizes for the peak measurement",
    )
    p.add_argument(
        "--max-step-seconds",
        type=float,
        default=60.0,
        help="skip a (size, precision) whose estimated step time, from its FLOPs and "
        "the measured matmul peak, exceeds this",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the (size, precision) rows already in the --out JSON (same batch and text "
        "length) and measure only the missing ones; each row keeps its own matmul peak",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every measurement in this process (fast smoke runs; memory less isolated)",
    )
    p.add_argument(
        "--out",
        default="benchmarks/results/model_speed",
        help="output path without extension: writes .md and .json",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        serve_worker(args.worker)
        return {}

    started = time.time()
    sizes = [s for s in args.sizes.split(",") if s]
    precisions = [s for s in args.precisions.split(",") if s]
    for prec in precisions:
        if prec not in PRECISIONS:
            raise ValueError(f"unknown precision {prec!r}; use {PRECISIONS}")
    import transformers

    import flava_zoo

    for size in sizes:
        flava_zoo.get_config(size)  # fail early on unknown names
    load_start = load_average()
    log(f"threads {args.threads}, load average {load_start}")

    peak_sizes = [int(n) for n in args.peak_sizes.split(",")]
    peaks: dict[str, Any] = {}
    for prec in precisions:
        dtype = torch.float32 if prec == "fp32" else torch.bfloat16
        peaks[prec] = matmul_peak(dtype, peak_sizes)
        log(f"matmul peak {prec}: {peaks[prec]['gflops']:.1f} GFLOP/s {peaks[prec]['by_size']}")

    results: list[dict[str, Any]] = []
    peaks_end: dict[str, Any] = {}
    notes: list[str] = []
    cpu = cpu_info()
    if "bf16" in precisions and not (cpu["avx512_bf16"] or cpu["amx_bf16"]):
        notes.append(
            "this CPU has neither AVX512-BF16 nor AMX: bf16 matmuls run on a slow "
            "fallback, far below the fp32 peak"
        )
    if args.in_process:
        notes.append("--in-process: every measurement ran in one process (memory less isolated)")
    batch, text_length = args.batch, args.text_length

    def write(complete: bool) -> dict[str, Any]:
        """Write the report so far (after every cell, so an interrupted run keeps its rows)."""
        report = {
            "command": " ".join(
                [
                    "python",
                    "benchmarks/model_speed.py",
                    *(argv if argv is not None else sys.argv[1:]),
                ]
            ),
            "git_commit": git_commit(),
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": round(time.time() - started, 1),
            "environment": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
                "cpu": cpu,
                "threads": args.threads,
                "load_average_start": load_start,
                "load_average_end": load_average(),
            },
            "inputs": {
                "batch": batch,
                "text_length": text_length,
                "caption_lengths": caption_lengths(batch, text_length),
                "caption_length_distribution": "8 + Gamma(shape 2, scale 3), rounded, clipped to [8, 30], seed 0",
            },
            "settings": {
                "warmup": args.warmup,
                "reps": args.reps,
                "reps_base": args.reps_base,
                "cell_seconds": args.cell_seconds,
                "max_step_seconds": args.max_step_seconds,
                "in_process": args.in_process,
            },
            "matmul_peak": peaks,
            "matmul_peak_at_end": peaks_end,
            "results": results,
            "complete": complete,
            "notes": notes,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(render_markdown(report))
        return report

    done = (
        _previous_rows(Path(args.out).with_suffix(".json"), batch, text_length)
        if args.resume
        else {}
    )
    ordered = sorted(precisions, key=PRECISIONS.index)  # fp32 first: it counts the FLOPs
    for size in sizes:
        cfg = flava_zoo.get_config(size)
        reps = args.reps_base if (cfg.image.hidden_size >= 768 and args.reps_base) else args.reps
        flops: dict[str, Any] | None = None
        for prec in ordered:
            if (size, prec) in done:
                row = done[(size, prec)]
                log(f"{size} {prec}: kept from the previous run ({row.get('measured_at')})")
                results.append(row)
                notes.append(
                    f"{size} {prec} kept from an earlier run (--resume), measured at "
                    f"{row.get('measured_at', 'an unrecorded time')} against its own matmul peak"
                )
                if row["status"] == "ok" and flops is None:
                    flops = {
                        "ours": row["ours"]["flops"],
                        "peer": row["peer"]["flops"],
                        "useful": row["useful_flops"],
                        "ours_parameters": row["ours"]["parameters"],
                        "peer_parameters": row["peer"]["parameters"],
                    }
                continue
            if flops is None and prec != "fp32":
                log(f"{size}: counting FLOPs")
                flops = run_task(
                    "flops",
                    dict(size=size, batch=batch, text_length=text_length),
                    args.threads,
                    args.in_process,
                )
            if flops is not None:
                estimate = (flops["ours"] + flops["peer"]) / 2 / (peaks[prec]["gflops"] * 1e9)
                if estimate > args.max_step_seconds:
                    reason = (
                        f"est. {estimate:.0f} s/step at the measured {prec} matmul peak "
                        f"{peaks[prec]['gflops']:.1f} GFLOP/s > --max-step-seconds "
                        f"{args.max_step_seconds:.0f}"
                    )
                    log(f"{size} {prec}: skipped ({reason})")
                    results.append(
                        {
                            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                            "size": size,
                            "precision": prec,
                            "status": "skipped",
                            "reason": reason,
                            "estimated_step_s": round(estimate, 1),
                        }
                    )
                    continue
            count = flops is None
            memory = {}
            for impl in ("ours", "peer"):
                log(f"{size} {prec} {impl}: peak memory" + (" and FLOPs" if count else ""))
                memory[impl] = run_task(
                    "memory",
                    dict(
                        size=size,
                        precision=prec,
                        impl=impl,
                        batch=batch,
                        text_length=text_length,
                        flops=count,
                    ),
                    args.threads,
                    args.in_process,
                )
            if count:
                flops = {
                    "ours": memory["ours"]["flops"],
                    "peer": memory["peer"]["flops"],
                    "useful": memory["ours"]["useful"],
                    "ours_parameters": memory["ours"]["parameters"],
                    "peer_parameters": memory["peer"]["parameters"],
                }
                log(
                    f"{size}: GFLOPs ours {flops['ours'] / 1e9:.1f}, peer "
                    f"{flops['peer'] / 1e9:.1f}, useful {flops['useful'] / 1e9:.1f}"
                )
            log(f"{size} {prec}: timing, {args.warmup} warm-up + up to {reps} reps, interleaved")
            timing = run_task(
                "time",
                dict(
                    size=size,
                    precision=prec,
                    batch=batch,
                    text_length=text_length,
                    warmup=args.warmup,
                    reps=reps,
                    budget_s=args.cell_seconds,
                    ref_size=_ref_size(peaks[prec]),
                ),
                args.threads,
                args.in_process,
            )
            row = summarise(size, prec, flops, timing, memory, peaks[prec]["gflops"])
            row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            results.append(row)
            write(complete=False)
            log(
                f"{size} {prec}: ours {row['ours']['ms_median']:.0f} ms, peer "
                f"{row['peer']['ms_median']:.0f} ms -> {row['speed_ratio']:.2f}x; memory "
                f"{row['ours']['peak_mib']:.0f} vs {row['peer']['peak_mib']:.0f} MiB -> "
                f"{_ratio(row['memory_ratio'])}; % peak useful ours "
                f"{100 * row['ours']['frac_peak_useful']:.0f}%, peer "
                f"{100 * row['peer']['frac_peak_useful']:.0f}%"
            )

    if not args.in_process:
        for prec in precisions:
            dtype = torch.float32 if prec == "fp32" else torch.bfloat16
            peaks_end[prec] = matmul_peak(dtype, peak_sizes)
            log(f"matmul peak {prec} at the end: {peaks_end[prec]['gflops']:.1f} GFLOP/s")
    report = write(complete=True)
    log(f"wrote {args.out}.md and {args.out}.json")
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
