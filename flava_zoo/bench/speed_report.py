"""The one writer of speed reports: :func:`write_report` writes ``<out>.json`` and ``<out>.md``.

The Markdown page has one table per measurement of :func:`flava_zoo.bench.speed.run`
(backbone, pretraining step, data loading), each figure taken from the one measurement
that produced it, then the matmul peaks, how to read it, and where it was measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._provenance import describe_machine

__all__ = ["render_markdown", "write_report"]

BACKBONE_HEADER = (
    "| size | precision | implementation | params (M) | GFLOPs/sample fwd / train | forward ms "
    "| train step ms (spread) | inference samples/s | train peak MiB | train TFLOP/s "
    "| % matmul peak (own / useful) | vs transformers: train / fwd speedup, memory |"
)
PRETRAIN_HEADER = (
    "| size | precision | step | batch | ms per step (spread) | samples/s | GFLOPs per step "
    "| TFLOP/s | % matmul peak | MFU (nominal) | SDPA kernels | speedup of ours |"
)
DATA_HEADER = "| data source | samples/s per worker | model samples/s | data / model | workers needed |"


def _f(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _empty(r: dict[str, Any], cells: int) -> str:
    return f"| {r['size']} | {r['precision']} | {r['implementation']} | {r['status']} |" + " |" * (cells - 4)


def _backbone_row(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return _empty(r, 12)
    vs = r.get("ours_vs", {}).get("transformers") if r["implementation"] == "flava_zoo" else r.get("ours_vs_this")
    versus = "-" if vs is None else (f"{vs['train_speedup']:.2f}x / {vs['forward_speedup']:.2f}x, "
                                     f"{_f(vs['memory_ratio'], '.2f')}")
    if r["implementation"] == "transformers":
        versus = "(reference)"
    elif r["implementation"] != "flava_zoo" and vs is not None:
        versus = "ours vs this: " + versus
    cells = [
        r["size"], r["precision"], r["implementation"], f"{r['parameters'] / 1e6:.2f}",
        f"{r['forward_flops_per_sample'] / 1e9:.3f} / {r['train_flops_per_sample'] / 1e9:.3f}",
        f"{r['forward']['ms_median']:.1f}", f"{r['train']['ms_median']:.1f} ({100 * r['train']['spread']:.0f}%)",
        f"{r['throughput_samples_per_s']:.1f}", _f(r["peak_mib"], ".0f"), f"{r['train_tflops']:.3f}",
        f"{_pct(r['frac_peak_own'])} / {_pct(r.get('frac_peak_useful'))}", versus,
    ]
    return "| " + " | ".join(cells) + " |"


def _pretrain_row(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return _empty(r, 12)
    cells = [
        r["size"], r["precision"], r["implementation"] + (f" (compile {r['compile_s']} s)" if "compile_s" in r else ""),
        str(r["batch"]), f"{r['step']['ms_median']:.1f} ({100 * r['step']['spread']:.0f}%)",
        f"{r['samples_per_s']:.1f}", f"{r['flops'] / 1e9:.2f}", f"{r['tflops']:.3f}", _pct(r["frac_peak"]),
        _pct(r.get("mfu_nominal")), ", ".join(r["sdpa"]) + (f"; flash only: {r['flash_only']}" if "flash_only" in r else ""),
        "-" if "speedup_of_ours" not in r else f"{r['speedup_of_ours']:.2f}x",
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as one Markdown page (see the module docstring)."""
    s, m = report["settings"], report["machine"]
    cpu = m["cpu"]
    lines = [
        f"# {report.get('title', 'Speed')}: flava_zoo vs transformers' (and torchmultimodal's) FLAVA",
        "",
        f"{s['device'].upper()}, {m['threads']} torch threads. Backbone: batch {s['batch']}, text padded to "
        f"{s['text_length']} tokens (caption lengths {report['caption_lengths']}), images at each size's "
        f"resolution, random weights, dropout 0; median of {s['reps']} rounds"
        + (f" ({s['reps_base']} for flava-base)" if s.get("reps_base") else "")
        + f" after {s['warmup']} warm-up, every implementation interleaved in one process.",
        "",
        "## Backbone: forward, training step, inference, memory, FLOPs",
        "",
        BACKBONE_HEADER,
        "|---|---|---|" + "---:|" * 8 + "---|",
        *(_backbone_row(r) for r in report["backbone"]),
    ]
    if report["pretrain"]:
        lines += ["", "## Pretraining step (multimodal stage: contrastive, ITM, MMM-image, MMM-text; AdamW)", "",
                  PRETRAIN_HEADER, "|---|---|---|" + "---:|" * 7 + "---|---:|",
                  *(_pretrain_row(r) for r in report["pretrain"])]
    if report["data"]:
        lines += ["", "## Data loading: one worker (1 torch thread) against the pretraining step", "", DATA_HEADER,
                  "|---|---:|---:|---:|---:|"]
        for r in report["data"]:
            model = r.get("model_samples_per_s")
            lines.append(f"| {r['source']} | {r['samples_per_s']:.0f} | {_f(model, '.0f')} "
                         f"| {_f(model and r['samples_per_s'] / model, '.2f')} | {r.get('workers_needed', 'n/a')} |")
        if report["data"][0].get("model"):
            lines += ["", f"Model: ours, {report['data'][0]['model']}."]
    peaks = report["matmul_peak"]
    lines += [
        "",
        "Matmul peak (best square matmul, measured at the start of this run): "
        + ", ".join(f"{p} {v['gflops']:.1f} GFLOP/s (by size {v['by_size']})" for p, v in peaks.items())
        + "; at the end: " + ", ".join(f"{p} {v:.1f}" for p, v in report.get("matmul_peak_at_end", {}).items()),
        "",
        "How to read it: the training step is forward, backward and an AdamW step, timed once and used for every "
        "column that needs it (TFLOP/s, % peak, speedups); inference samples/s is batch / the forward's median. "
        "Spread = (max - min) / median of the rounds. Peak memory is the rise over one forward + backward "
        + ("(torch.cuda.max_memory_allocated)" if s["device"] == "cuda" else
           "of the resident set (VmHWM reset just before)" + (" in a fresh process per implementation" if s["isolate"] else ""))
        + ": activations, gradients, temporaries; not weights or AdamW state. FLOPs: torch.utils.flop_counter over "
        "forward + backward, each model's own (transformers computes the padded text; flava_zoo trims it); 'useful' "
        "= ours on each sample's real tokens alone (the fair count). % matmul peak = achieved FLOP/s / the matmul "
        "peak of that precision above. Speedups are medians over rounds of transformers' time / ours within a round "
        "(>1: ours is faster); memory = ours / transformers. MFU (nominal) divides by the GPU's datasheet peak.",
        "",
        f"- command: `{report['command']}`",
        f"- git commit: {report['git']['commit']}" + (" (with uncommitted changes)" if report["git"]["dirty"] else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- machine: {describe_machine(m)}; CPU capability {cpu.get('torch_cpu_capability')}, AVX512-BF16 "
        f"{cpu.get('avx512_bf16')}, AMX-BF16 {cpu.get('amx_bf16')}",
        f"- load average at start {m.get('load_average')}, at end {report.get('load_average_end')} (other "
        "processes share this machine; interleaving keeps the ratios fair, absolute times are noisier)",
        f"- started {report['started']}, finished {report.get('finished')} ({report.get('duration_s', 0):.0f} s)",
    ]
    lines += [f"- {note}" for note in report.get("notes", [])]
    if not report.get("complete", True):
        lines.append("- partial: the run has not finished (or was interrupted); rows so far")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` + ``.json`` (the whole report) and ``out`` + ``.md``; return both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
