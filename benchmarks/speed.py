"""Speed table: flava_zoo's FlavaModel side by side with transformers' and torchmultimodal's.

For each named size, this builds our ``flava_zoo.create_model(size)``, transformers'
``FlavaModel`` at the same config (``model_speed.hf_config``) and, when ``import
torchmultimodal`` works, torchmultimodal's ``flava_model`` at the same config, feeds them the
same inputs (``model_speed.make_inputs``: ``--batch`` images at the size's resolution, text
padded to ``--text-length`` tokens with COCO-like caption lengths) and reports per
implementation:

* forward time: eval mode, no grad, one forward over the image-text pairs (both towers, their
  normalised class-token embeddings and the fusion encoder; ``model_speed.loss_of``);
* training-step time: train mode, gradients cleared, forward, backward and an ``AdamW`` step;
* inference throughput in samples/s: the eval forwards back to back at ``--infer-batch``
  (by default the forward timings above: samples over their summed time);
* peak memory of a training step: on CPU the rise of the resident set over the first
  forward + backward in a fresh process (``model_speed.memory_task``); on CUDA
  ``torch.cuda.max_memory_allocated`` over the same step. Gradients and activations are
  included, the optimizer state (AdamW: 8 bytes per parameter) is not;
* parameter count, and FLOPs per sample of the forward and of forward + backward, counted by
  ``torch.utils.flop_counter`` (each model's own work: transformers computes the padded text);
* achieved TFLOP/s and, with a peak (``--peak-tflops``, by default 989 on CUDA: H100/H200
  dense bf16), model FLOPs utilisation.

All implementations of a size run in one process, their repetitions interleaved with the
order rotating, so that load from other processes on the machine hits them alike. Ratios
are against each peer: speedup = peer time / our time, throughput ours / peer, memory ours /
peer. CPU runs fp32; ``--device cuda`` runs the forwards under bf16 autocast.

    python benchmarks/speed.py --sizes flava-tiny,flava-small,flava-base --batch 8 \\
        --text-length 77 --reps 5 --reps-base 3 --out benchmarks/results/speed

writes ``speed.json`` and ``speed.md`` (the command, git commit, machine, settings and
timestamps with them); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_speed  # noqa: E402

IMPLS = ("flava_zoo", "transformers", "torchmultimodal")
OURS = "flava_zoo"
# our implementation names -> model_speed's
_MS_IMPL = {"flava_zoo": "ours", "transformers": "peer"}
MIB = 2**20
DEFAULT_CUDA_PEAK_TFLOPS = 989.0  # H100 / H200 SXM dense bf16


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean."""
    print(f"[speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- implementations


def torchmultimodal_available() -> bool:
    """Whether ``import torchmultimodal`` works here."""
    if importlib.util.find_spec("torchmultimodal") is None:
        return False
    try:
        import torchmultimodal  # noqa: F401
    except Exception:  # a broken install counts as absent
        return False
    return True


def implementation_version(impl: str) -> str | None:
    """Installed version of the package behind ``impl`` (None where it is not installed)."""
    from importlib import metadata

    names = {
        "flava_zoo": ("flava-zoo", "flava_zoo"),
        "transformers": ("transformers",),
        "torchmultimodal": ("torchmultimodal", "torchmultimodal-nightly"),
    }[impl]
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def build_torchmultimodal(cfg: Any) -> torch.nn.Module:
    """torchmultimodal's ``flava_model`` with our config's sizes, dropout off.

    UNTESTED: torchmultimodal is not installed where this was written; the keyword names
    follow ``torchmultimodal/models/flava/model.py::flava_model``. Its fusion encoder does
    not mask the text padding, and its image encoder has no separate projection dims.
    """
    try:
        from torchmultimodal.models.flava.model import flava_model
    except ImportError:  # older releases
        from torchmultimodal.models.flava.flava_model import flava_model

    im, tx, mm = cfg.image, cfg.text, cfg.multimodal
    return flava_model(
        image_hidden_size=im.hidden_size,
        image_num_attention_heads=im.num_heads,
        image_num_hidden_layers=im.num_layers,
        image_dropout=0.0,
        image_intermediate_size=im.intermediate_size,
        image_layer_norm_eps=im.layer_norm_eps,
        image_size=im.image_size,
        patch_size=im.patch_size,
        num_channels=im.num_channels,
        text_hidden_size=tx.hidden_size,
        text_num_attention_heads=tx.num_heads,
        text_num_hidden_layers=tx.num_layers,
        text_dropout=0.0,
        text_intermediate_size=tx.intermediate_size,
        text_layer_norm_eps=tx.layer_norm_eps,
        vocab_size=tx.vocab_size,
        pad_token_id=tx.pad_token_id,
        type_vocab_size=tx.type_vocab_size,
        max_position_embeddings=tx.max_position_embeddings,
        multimodal_hidden_size=mm.hidden_size,
        multimodal_num_attention_heads=mm.num_heads,
        multimodal_num_hidden_layers=mm.num_layers,
        multimodal_dropout=0.0,
        multimodal_intermediate_size=mm.intermediate_size,
        multimodal_layer_norm_eps=mm.layer_norm_eps,
        text_and_image_proj_size=cfg.projection_dim,
    )


def _torchmultimodal_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    # UNTESTED (see build_torchmultimodal). The towers and the fusion are called one by one:
    # FLAVAModel.forward would run the image tower twice (unmasked and "masked").
    import torch.nn.functional as F

    image = model.image_encoder(inputs["pixel_values"])
    text = model.text_encoder(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        return_hidden_states=True,
    )
    fused = model.encode_mm(image.hidden_states[-1], text.hidden_states[-1])
    parts = [
        image.last_hidden_state,
        text.last_hidden_state,
        fused.last_hidden_state,
        F.normalize(model.image_projection(image.last_hidden_state[:, 0]), dim=-1),
        F.normalize(model.text_projection(text.last_hidden_state[:, 0]), dim=-1),
    ]
    return sum(p.float().mean() for p in parts)


def build(impl: str, size: str) -> tuple[torch.nn.Module, Any]:
    """``impl``'s model at our config of ``size`` (seeded, train mode), and that config."""
    if impl in _MS_IMPL:
        return model_speed.build(_MS_IMPL[impl], size)
    if impl != "torchmultimodal":
        raise ValueError(f"unknown implementation {impl!r}; use one of {IMPLS}")
    import flava_zoo

    cfg = flava_zoo.get_config(size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_torchmultimodal(cfg)
    return model.train(), cfg


def loss_of(impl: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward over the image-text pairs, reduced to a scalar touching every output."""
    if impl in _MS_IMPL:
        return model_speed.loss_of(_MS_IMPL[impl], model, inputs)
    return _torchmultimodal_loss(model, inputs)


# ----------------------------------------------------------------------------- steps


def autocast(device: str, precision: str) -> Any:
    """bf16 autocast on ``device`` for ``precision`` ``bf16``; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return nullcontext()


def forward_pass(
    impl: str,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    device: str,
    precision: str,
    no_grad: bool = True,
) -> None:
    """An inference forward, by default without grad (the caller sets eval mode).

    ``no_grad=False`` is for counting its FLOPs: the same operations, but FlopCounterMode's
    module tracker fails on a view of a parameter made under no_grad (a leaf that requires
    grad; our fusion's expanded class token is one).
    """
    with torch.no_grad() if no_grad else nullcontext(), autocast(device, precision):
        loss_of(impl, model, inputs)


def backward_pass(
    impl: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: str, precision: str
) -> None:
    """Gradients cleared, forward (under autocast for bf16), backward; no optimizer step."""
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = loss_of(impl, model, inputs)
    loss.backward()


def training_step(
    impl: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    device: str,
    precision: str,
) -> None:
    """Forward, backward and an optimizer step."""
    backward_pass(impl, model, inputs, device, precision)
    optimizer.step()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def cuda_memory_of_step(
    impl: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor], precision: str
) -> float:
    """MiB allocated at the peak of one forward + backward above what was allocated before."""
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    backward_pass(impl, model, inputs, "cuda", precision)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=True)
    return peak / MIB


# ----------------------------------------------------------------------------- tasks


def cpu_memory_task(
    size: str, impl: str, precision: str, batch: int, text_length: int
) -> dict[str, Any]:
    """Peak RSS rise over the first forward + backward after the build (run it in a fresh
    process): ``model_speed.memory_task`` for flava_zoo and transformers, the same recipe
    for torchmultimodal."""
    if impl in _MS_IMPL:
        return model_speed.memory_task(size, precision, _MS_IMPL[impl], batch, text_length)
    # UNTESTED (torchmultimodal): model_speed.memory_task's measurement with our builder
    model, cfg = build(impl, size)
    inputs = model_speed.make_inputs(cfg, batch, text_length)
    if not model_speed._reset_peak_rss():
        return {"peak_mib": None, "method": "VmHWM reset not possible here"}
    base_kib = model_speed._proc_status_kib("VmRSS")
    backward_pass(impl, model, inputs, "cpu", precision)
    peak_kib = model_speed._proc_status_kib("VmHWM")
    return {
        "peak_mib": (peak_kib - base_kib) / 1024,
        "baseline_rss_mib": base_kib / 1024,
        "method": "VmHWM after clear_refs reset",
    }


def measure_task(
    size: str,
    impls: list[str],
    device: str,
    precision: str,
    batch: int,
    text_length: int,
    warmup: int,
    reps: int,
    infer_batch: int,
) -> dict[str, Any]:
    """Every implementation of ``size`` in this process: parameters, FLOPs, CUDA memory, and
    interleaved timings (the order rotating each repetition) of the forward, the training
    step and, at an ``infer_batch`` other than ``batch``, the inference forward."""
    models: dict[str, torch.nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    errors: dict[str, str] = {}
    cfg = None
    for impl in impls:
        try:
            model, cfg = build(impl, size)
            models[impl] = model.to(device)
        except Exception as exc:  # only the guarded, untested torchmultimodal path may fail
            if impl != "torchmultimodal":
                raise
            errors[impl] = f"{type(exc).__name__}: {exc}"
    inputs = {k: v.to(device) for k, v in model_speed.make_inputs(cfg, batch, text_length).items()}
    infer_inputs = None
    if infer_batch != batch:
        infer_inputs = {
            k: v.to(device)
            for k, v in model_speed.make_inputs(cfg, infer_batch, text_length, seed=1).items()
        }

    result: dict[str, Any] = {"impls": {}, "errors": errors}
    for impl, model in list(models.items()):
        r: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
        try:
            model.eval()
            r["forward_flops"] = model_speed.count_flops(
                lambda i=impl, m=model: forward_pass(i, m, inputs, device, precision, False)
            )
            model.zero_grad(set_to_none=True)
            model.train()
            r["train_flops"] = model_speed.count_flops(
                lambda i=impl, m=model: backward_pass(i, m, inputs, device, precision)
            )
            model.zero_grad(set_to_none=True)
            if device == "cuda":  # after the FLOP count: CUDA/cuBLAS set-up not charged
                r["peak_mib"] = cuda_memory_of_step(impl, model, inputs, precision)
                r["memory_method"] = "torch.cuda.max_memory_allocated over one fwd+bwd"
        except Exception as exc:
            if impl != "torchmultimodal":
                raise
            errors[impl] = f"{type(exc).__name__}: {exc}"
            del models[impl]
            continue
        optimizers[impl] = torch.optim.AdamW(model.parameters(), lr=1e-5)
        r.update(forward_s=[], train_s=[], infer_s=[])
        result["impls"][impl] = r

    order = list(models)
    for rep in range(warmup + reps):
        timed = rep >= warmup
        k = rep % max(len(order), 1)
        rotated = order[k:] + order[:k]
        phases = ["forward", "train"] + (["infer"] if infer_inputs is not None else [])
        for phase in phases:
            for impl in rotated:
                model = models[impl]
                if phase == "train":
                    model.train()
                    fn = lambda i=impl, m=model: training_step(  # noqa: E731
                        i, m, optimizers[i], inputs, device, precision
                    )
                else:
                    model.eval()
                    x = inputs if phase == "forward" else infer_inputs
                    fn = lambda i=impl, m=model, x=x: forward_pass(  # noqa: E731
                        i, m, x, device, precision
                    )
                t = _timed(fn, device)
                if timed:
                    result["impls"][impl][f"{phase}_s"].append(t)
        if timed:
            log(
                f"  {size} rep {rep - warmup + 1}/{reps}: "
                + ", ".join(
                    f"{i} fwd {result['impls'][i]['forward_s'][-1] * 1e3:.0f} ms / train "
                    f"{result['impls'][i]['train_s'][-1] * 1e3:.0f} ms"
                    for i in order
                )
            )
        else:
            log(f"  {size} warm-up {rep + 1}/{warmup} done")
    return result


TASKS = {"measure": measure_task, "cpu_memory": cpu_memory_task}


def run_task(task: str, kwargs: dict[str, Any], threads: int, in_process: bool) -> dict[str, Any]:
    """Run one of this script's tasks in a fresh interpreter (or here, with ``in_process``)."""
    return model_speed.run_task(task, kwargs, threads, in_process, script=__file__, tasks=TASKS)


# ----------------------------------------------------------------------------- report


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 2)


def summarise(
    size: str,
    impl: str,
    measured: dict[str, Any],
    memory: dict[str, Any] | None,
    batch: int,
    infer_batch: int,
    peak_tflops: float | None,
) -> dict[str, Any]:
    """One row of the table from the raw timings, FLOPs and memory of ``impl`` at ``size``."""
    fwd, train = measured["forward_s"], measured["train_s"]
    infer = measured["infer_s"] or fwd
    per_sample_fwd = measured["forward_flops"] / batch
    row: dict[str, Any] = {
        "size": size,
        "implementation": impl,
        "status": "ok",
        "version": implementation_version(impl),
        "parameters": measured["parameters"],
        "forward_flops_per_sample": round(per_sample_fwd),
        "train_flops_per_sample": round(measured["train_flops"] / batch),
        "forward_ms_median": _median_ms(fwd),
        "forward_ms_all": [round(t * 1e3, 2) for t in fwd],
        "train_ms_median": _median_ms(train),
        "train_ms_all": [round(t * 1e3, 2) for t in train],
        "throughput_samples_per_s": round(infer_batch * len(infer) / sum(infer), 2),
        "throughput_method": (
            f"{len(infer)} eval forwards of {infer_batch} samples: samples / summed time"
        ),
    }
    if memory is not None:
        peak = memory.get("peak_mib")
        row["peak_mib"] = None if peak is None else round(peak, 1)
        row["memory_method"] = memory.get("method")
    else:
        row["peak_mib"] = round(measured["peak_mib"], 1)
        row["memory_method"] = measured["memory_method"]
    fwd_rate = measured["forward_flops"] / statistics.median(fwd)
    train_rate = measured["train_flops"] / statistics.median(train)
    row["forward_tflops"] = round(fwd_rate / 1e12, 5)
    row["train_tflops"] = round(train_rate / 1e12, 5)
    if peak_tflops:
        row["forward_mfu"] = round(fwd_rate / (peak_tflops * 1e12), 5)
        row["train_mfu"] = round(train_rate / (peak_tflops * 1e12), 5)
    return row


def ratios(rows: list[dict[str, Any]], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against every other implementation measured at the same size."""
    ours = {r["size"]: r for r in rows if r["implementation"] == OURS and r["status"] == "ok"}
    out = []
    for peer in rows:
        if peer["implementation"] == OURS or peer["status"] != "ok" or peer["size"] not in ours:
            continue
        o, size, impl = ours[peer["size"]], peer["size"], peer["implementation"]
        raw = measured[size]["impls"]

        def paired(key: str, impl: str = impl, raw: dict[str, Any] = raw) -> float:
            pairs = zip(raw[impl][key], raw[OURS][key])
            return round(statistics.median(p / q for p, q in pairs), 3)

        mem = None
        if o["peak_mib"] is not None and peer["peak_mib"]:
            mem = round(o["peak_mib"] / peer["peak_mib"], 3)
        out.append(
            {
                "size": size,
                "against": impl,
                "forward_speedup": round(peer["forward_ms_median"] / o["forward_ms_median"], 3),
                "forward_speedup_paired_median": paired("forward_s"),
                "train_speedup": round(peer["train_ms_median"] / o["train_ms_median"], 3),
                "train_speedup_paired_median": paired("train_s"),
                "throughput_ratio": round(
                    o["throughput_samples_per_s"] / peer["throughput_samples_per_s"], 3
                ),
                "memory_ratio": mem,
                "parameter_ratio": round(o["parameters"] / peer["parameters"], 4),
                "forward_flops_ratio": round(
                    o["forward_flops_per_sample"] / peer["forward_flops_per_sample"], 3
                ),
            }
        )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: the table, the ratios and where it was measured."""
    s, m = report["settings"], report["machine"]
    mfu = bool(s.get("peak_tflops"))
    header = (
        "| size | implementation | params (M) | fwd GFLOPs/sample | forward ms | train step ms "
        "| inference samples/s | train peak MiB | fwd TFLOP/s | train TFLOP/s |"
        + (" fwd MFU | train MFU |" if mfu else "")
    )
    ncols = 10 + (2 if mfu else 0)
    lines = [
        "# Speed: flava_zoo vs transformers' and torchmultimodal's FLAVA",
        "",
        f"{s['device'].upper()} {s['precision']}, batch {s['batch']} (inference throughput at "
        f"{s['infer_batch']}), text padded to {s['text_length']} tokens (caption lengths "
        f"{s['caption_lengths']}), images at each size's resolution, torch threads {s['threads']}; "
        f"median of {s['reps']} repetitions after {s['warmup']} warm-up "
        f"({s['reps_base']} for flava-base and larger). Same config and inputs for every "
        "implementation, dropout 0.",
        "",
        header,
        "|---|---|" + "---:|" * (ncols - 2),
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['size']} | {r['implementation']} | {r['status']} |" + " |" * (ncols - 3)
            )
            continue
        cells = [
            r["size"],
            r["implementation"],
            f"{r['parameters'] / 1e6:.2f}",
            f"{r['forward_flops_per_sample'] / 1e9:.3f}",
            f"{r['forward_ms_median']:.1f}",
            f"{r['train_ms_median']:.1f}",
            f"{r['throughput_samples_per_s']:.1f}",
            _fmt(r["peak_mib"], ".0f"),
            f"{r['forward_tflops']:.4f}",
            f"{r['train_tflops']:.4f}",
        ]
        if mfu:
            cells += [f"{100 * r['forward_mfu']:.1f}%", f"{100 * r['train_mfu']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios of flava_zoo against each peer (speedup = peer time / our time; throughput, "
        "memory and FLOPs ours / peer; paired = median over repetitions of the ratio within "
        "one repetition):",
        "",
        "| size | against | forward speedup (peer/ours) | train-step speedup (peer/ours) "
        "| paired fwd / train | throughput (ours/peer) | memory (ours/peer) "
        "| FLOPs (ours/peer) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in report["ratios"]:
        lines.append(
            f"| {q['size']} | {q['against']} | {q['forward_speedup']:.2f}x "
            f"| {q['train_speedup']:.2f}x | {q['forward_speedup_paired_median']:.2f}x / "
            f"{q['train_speedup_paired_median']:.2f}x | {q['throughput_ratio']:.2f} "
            f"| {_fmt(q['memory_ratio'], '.2f')} | {q['forward_flops_ratio']:.2f} |"
        )
    env = m["cpu"]
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    lines += [
        "",
        "How to read it: forward = eval, no grad, both towers + their projected embeddings + "
        "the fusion encoder over the pairs; train step = forward, backward and AdamW step. "
        "Train peak memory is the rise over one forward + backward "
        + (
            "of torch.cuda.max_memory_allocated"
            if s["device"] == "cuda"
            else "of the resident set (VmHWM)"
            + (" (all in one process: --in-process)" if s["in_process"] else ", in a fresh process")
            + " per model"
        )
        + ": activations, gradients and temporaries, not weights or the AdamW state "
        "(8 bytes per parameter). FLOPs by torch.utils.flop_counter, each model's own "
        "(transformers computes the padded text; flava_zoo trims it to the longest caption). "
        + (
            f"MFU = achieved FLOP/s / {s['peak_tflops']} TFLOP/s."
            if mfu
            else "No MFU on CPU (give --peak-tflops for one)."
        ),
        "",
        f"- command: `{report['command']}`",
        f"- git commit: {report['git_commit']}"
        + (" (with uncommitted changes)" if report["git_dirty"] else "")
        + f"; torch {m['torch']}, Python {m['python']}; versions "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- machine: {env['model']}, {env['logical_cpus']} logical CPUs, "
        f"{_fmt(m['memory_gib'], '.0f')} GiB RAM, {m['platform']}{gpu}; torch threads "
        f"{s['threads']}",
        f"- load average at start {m['load_average_start']}, at end {m['load_average_end']}",
        f"- started {report['started']}, finished {report['finished']} "
        f"({report['duration_s']:.0f} s)",
    ]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    if not report.get("complete", True):
        lines.append("- partial: the run has not finished (or was interrupted); rows so far")
    return "\n".join(lines) + "\n"


def machine(device: str) -> dict[str, Any]:
    """CPU, RAM, OS and (on CUDA) GPU of this machine."""
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model_speed.cpu_info(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}, CUDA {torch.version.cuda}"
        )
    return info


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="flava-tiny,flava-small,flava-base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--infer-batch",
        type=int,
        default=0,
        help="batch of the inference-throughput forwards (default: --batch, from the "
        "forward timings)",
    )
    p.add_argument("--text-length", type=int, default=77)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per implementation")
    p.add_argument(
        "--reps-base",
        type=int,
        default=None,
        help="timed repetitions for flava-base and larger (default: --reps)",
    )
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--precision",
        default=None,
        choices=model_speed.PRECISIONS,
        help="default: fp32 on CPU, bf16 (autocast) on CUDA",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak FLOP/s for MFU, in TFLOP/s (default: {DEFAULT_CUDA_PEAK_TFLOPS:g} on CUDA, "
        "H100/H200 dense bf16; none on CPU)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every measurement in this process (fast smoke runs; memory less isolated)",
    )
    p.add_argument(
        "--out", default="benchmarks/results/speed", help="path without extension: .json, .md"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every size and implementation, write the JSON and Markdown, return the report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        model_speed.serve_worker(args.worker, TASKS)
        return {}

    import flava_zoo

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    warmup = args.warmup if args.warmup is not None else (3 if device == "cuda" else 1)
    peak_tflops = args.peak_tflops or (DEFAULT_CUDA_PEAK_TFLOPS if device == "cuda" else None)
    infer_batch = args.infer_batch or args.batch
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
        flava_zoo.get_config(size)  # fail early on unknown names
    available = [OURS, "transformers"]
    tmm = torchmultimodal_available()
    if tmm:
        available.append("torchmultimodal")
    text_length = args.text_length
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.time()
    load_start = model_speed.load_average()
    command = " ".join(
        ["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]
    )
    info = machine(device)
    versions = {impl: implementation_version(impl) or "not installed" for impl in IMPLS}
    log(f"{device} {precision}, threads {args.threads}, implementations {available}")
    notes: list[str] = []
    if args.in_process:
        notes.append("--in-process: every measurement ran in one process (memory less isolated)")
    if not tmm:
        notes.append("torchmultimodal is not installed here: its rows say so")
    else:
        notes.append("torchmultimodal's builder and forward in speed.py are untested")

    rows: list[dict[str, Any]] = []
    measured_all: dict[str, Any] = {}

    def write(complete: bool) -> dict[str, Any]:
        """Write the report so far (after every size, so an interrupted run keeps its rows)."""
        info["load_average_start"] = load_start
        info["load_average_end"] = model_speed.load_average()
        report = {
            "command": command,
            "git_commit": model_speed.git_commit(),
            "git_dirty": model_speed.git_dirty(),
            "started": started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": round(time.time() - t0, 1),
            "machine": info,
            "versions": versions,
            "settings": {
                "device": device,
                "precision": precision,
                "threads": args.threads,
                "batch": args.batch,
                "infer_batch": infer_batch,
                "text_length": text_length,
                "caption_lengths": model_speed.caption_lengths(args.batch, text_length),
                "warmup": warmup,
                "reps": args.reps,
                "reps_base": args.reps_base or args.reps,
                "peak_tflops": peak_tflops,
                "in_process": args.in_process,
            },
            "rows": rows,
            "ratios": ratios(rows, measured_all),
            "complete": complete,
            "notes": notes,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(render_markdown(report))
        return report

    for size in sizes:
        cfg = flava_zoo.get_config(size)
        reps = args.reps_base if (cfg.image.hidden_size >= 768 and args.reps_base) else args.reps
        memory: dict[str, Any] = {}
        if device == "cpu":
            for impl in available:
                log(f"{size} {impl}: peak memory of a training step")
                kwargs = dict(
                    size=size,
                    impl=impl,
                    precision=precision,
                    batch=args.batch,
                    text_length=text_length,
                )
                try:
                    memory[impl] = run_task("cpu_memory", kwargs, args.threads, args.in_process)
                except Exception as exc:  # only the untested torchmultimodal path may fail
                    if impl != "torchmultimodal":
                        raise
                    memory[impl] = {"peak_mib": None, "method": f"failed: {exc}"}
        log(f"{size}: FLOPs, then {warmup} warm-up + {reps} reps of each, interleaved")
        measured = run_task(
            "measure",
            dict(
                size=size,
                impls=available,
                device=device,
                precision=precision,
                batch=args.batch,
                text_length=text_length,
                warmup=warmup,
                reps=reps,
                infer_batch=infer_batch,
            ),
            args.threads,
            args.in_process,
        )
        measured_all[size] = measured
        for impl in IMPLS:
            if impl in measured["impls"]:
                rows.append(
                    summarise(
                        size,
                        impl,
                        measured["impls"][impl],
                        memory.get(impl),
                        args.batch,
                        infer_batch,
                        peak_tflops,
                    )
                )
            else:
                status = "not installed" if impl not in available else "error"
                row = {"size": size, "implementation": impl, "status": status}
                if impl in measured["errors"]:
                    row["error"] = measured["errors"][impl]
                rows.append(row)
        report = write(complete=False)
        for q in report["ratios"]:
            if q["size"] == size:
                log(
                    f"{size} vs {q['against']}: forward {q['forward_speedup']:.2f}x, train "
                    f"{q['train_speedup']:.2f}x, throughput {q['throughput_ratio']:.2f}, "
                    f"memory {_fmt(q['memory_ratio'], '.2f')}"
                )

    report = write(complete=True)
    log(f"wrote {args.out}.md and {args.out}.json")
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
