"""How the speed benchmarks measure: one interleaved timer, memory, FLOPs and the matmul peak.

* :func:`interleave` times several callables round-robin (the order rotating each
  repetition, so that load from other processes and clock changes hit all alike), after
  warm-up, synchronising CUDA around every call; :func:`summarize` gives median and spread.
* :func:`peak_rss_rise` (CPU: the resident set's high-water mark, reset just before) and
  :func:`cuda_peak_rise` (``torch.cuda.max_memory_allocated``) give the memory of one call;
  :func:`in_child` runs a measurement in a fresh interpreter, so that one implementation's
  allocations do not hide another's (a forked child would deadlock in OpenMP).
* :func:`count_flops` counts the matmul / convolution / attention FLOPs of a call
  (``torch.utils.flop_counter``); :func:`matmul_peak` measures the rate of large square
  matmuls of a precision, the denominator of "share of the matmul peak" in the same run.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "count_flops",
    "flop_counts",
    "cuda_peak_rise",
    "in_child",
    "interleave",
    "matmul_peak",
    "paired_ratio",
    "peak_rss_rise",
    "summarize",
    "synchronize",
]

MIB = 2**20


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (nothing on CPU): a timer must not stop
    while kernels still run."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    reps: int = 5,
    device: str | torch.device = "cpu",
    budget_s: float | None = None,
    min_reps: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` over ``reps`` rounds after ``warmup`` untimed rounds.

    Each round calls every function once, the order rotated by one per round. With
    ``budget_s``, the rounds are cut (to no fewer than ``min_reps``) so that the timed rounds
    take about ``budget_s`` at the warm-up's pace. Returns ``{name: [seconds per round]}``.
    """
    if not fns:
        raise ValueError("interleave needs at least one function to time")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    warm_s, r = 0.0, 0
    while True:
        timed = r >= warmup
        if timed and len(times[names[0]]) >= reps:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if timed:
                times[name].append(elapsed)
            else:
                warm_s += elapsed
        if r == warmup - 1 and budget_s:
            reps = max(min_reps, min(reps, int(budget_s // max(warm_s / warmup, 1e-9))))
        if log is not None:
            label = f"rep {len(times[names[0]])}/{reps}" if timed else f"warm-up {r + 1}/{warmup}"
            log(label + ": " + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms" for n in names if timed))
        r += 1
    return times


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median, min and spread ((max - min) / median) in ms of a timer's list, and all of it."""
    if not seconds:
        raise ValueError("no timings to summarize")
    median = statistics.median(seconds)
    return {
        "ms_median": round(median * 1e3, 3),
        "ms_min": round(min(seconds) * 1e3, 3),
        "spread": round((max(seconds) - min(seconds)) / median, 3) if median > 0 else 0.0,
        "ms_all": [round(s * 1e3, 3) for s in seconds],
    }


def paired_ratio(slower: list[float], faster: list[float]) -> float:
    """Median over rounds of ``slower[i] / faster[i]``: the ratio within one round of an
    :func:`interleave`, robust to load that changes between rounds."""
    if len(slower) != len(faster) or not slower:
        raise ValueError(f"paired_ratio needs equal, non-empty lists, got {len(slower)}, {len(faster)}")
    return round(statistics.median(a / b for a, b in zip(slower, faster)), 4)


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


def flop_counts(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of the matmuls, convolutions and attention that ``fn()`` runs (it runs once),
    in total and by aten op (``{"aten.mm": ..., "aten._scaled_dot_product_flash_attention":
    ...}``: the fused attention kernels that ran are among the keys)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of :func:`flop_counts`."""
    return flop_counts(fn)[0]


def matmul_peak(
    dtype: torch.dtype,
    sizes: list[int],
    device: str | torch.device = "cpu",
    max_seconds: float = 3.0,
) -> dict[str, Any]:
    """Best GFLOP/s of square ``n x n`` matmuls in ``dtype`` on ``device`` (best of three
    after one warm-up). Sizes whose estimated time at the best rate so far exceeds
    ``max_seconds`` are skipped (bf16 on CPUs without bf16 units is ~100x slower)."""
    by_size: dict[str, float] = {}
    skipped: list[int] = []
    best = 0.0
    for n in sorted(sizes):
        flops = 2 * n**3
        if best and flops / (best * 1e9) > max_seconds:
            skipped.append(n)
            continue
        g = torch.Generator().manual_seed(n)
        a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best_t = time.perf_counter() - t0
        for _ in range(0 if best_t > max_seconds else 3):
            t0 = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best_t = min(best_t, time.perf_counter() - t0)
        rate = flops / best_t / 1e9
        by_size[str(n)] = round(rate, 2)
        best = max(best, rate)
    return {"gflops": round(best, 2), "by_size": by_size, "skipped_sizes": skipped}


# ----------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def peak_rss_rise(fn: Callable[[], Any]) -> dict[str, Any]:
    """MiB by which the resident set's peak rose over ``fn()`` above the RSS just before.

    The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` first (Linux >= 4.0);
    where that is refused, ``ru_maxrss`` is used, an overestimate if the process peaked
    higher earlier. Run it in a fresh process (:func:`in_child`) for a clean baseline.
    """
    import resource

    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base = _status_kib("VmRSS")
    fn()
    if reset:
        peak, method = _status_kib("VmHWM"), "VmHWM after clear_refs reset"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss (an overestimate if the process peaked higher before)"
    return {"peak_mib": round((peak - base) / 1024, 1), "baseline_mib": round(base / 1024, 1), "method": method}


def cuda_peak_rise(fn: Callable[[], Any], device: str | torch.device = "cuda") -> dict[str, Any]:
    """MiB of ``torch.cuda.max_memory_allocated`` over ``fn()`` above what was allocated
    before it (weights and inputs excluded)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    return {"peak_mib": round(peak / MIB, 1), "method": "torch.cuda.max_memory_allocated rise"}


def in_child(func: str, kwargs: dict[str, Any], threads: int | None = None) -> Any:
    """``module:function(**kwargs)`` run in a fresh interpreter; its JSON result.

    ``kwargs`` and the result must be JSON. The child gets ``threads`` torch threads (by
    default this process's count). A failing child raises ``RuntimeError`` with its exit
    code and the end of its error output.
    """
    spec = {"func": func, "kwargs": kwargs, "threads": threads or torch.get_num_threads()}
    proc = subprocess.run(
        [sys.executable, "-m", "flava_zoo.bench.timing"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {func}({kwargs}) failed with exit code {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main() -> None:
    """The other side of :func:`in_child`: read the spec from stdin, print the result."""
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(int(spec["threads"]))
    module, _, name = spec["func"].partition(":")
    result = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _child_main()
