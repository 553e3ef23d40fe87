"""The speed benchmark: flava_zoo's FLAVA against transformers' (and torchmultimodal's).

Every implementation of a size is built at our config of that size (dropout off), fed the
same inputs -- ``batch`` images at the size's resolution and text padded to ``text_length``
tokens with COCO-like caption lengths (:func:`caption_lengths`) -- and measured by the one
timer of :mod:`flava_zoo.bench.timing`, all implementations interleaved in one process:

* **backbone** (:func:`measure_backbone`): the forward (eval, no grad: both towers, their
  normalised class-token embeddings, the fusion encoder), the training step (forward,
  backward, AdamW step), inference throughput (``batch`` / the forward's median), the
  peak-memory rise of a forward + backward (a fresh interpreter per implementation on CPU,
  ``max_memory_allocated`` on CUDA), parameters, FLOPs per sample (each model's own, and the
  "useful" FLOPs: ours on each sample's real tokens only) and the share of the matmul peak
  of the precision measured in the same run;
* **pretraining** (:func:`measure_pretrain`): one multimodal pretraining step (contrastive,
  ITM, MMM-image, MMM-text; AdamW) of our :class:`FlavaForPretraining` against transformers'
  ``FlavaForPreTraining``, optionally compiled (``torch.compile``) and with the SDPA backend
  that actually ran recorded;
* **data** (:mod:`flava_zoo.bench.dataload`): samples/s of one loader worker.

:func:`run` does all of it for a :class:`SpeedSettings` and returns the report that
:mod:`flava_zoo.bench.speed_report` writes. ``benchmarks/speed.py`` is its command line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .. import _provenance
from . import timing

__all__ = ["SpeedSettings", "caption_lengths", "hf_config", "make_inputs", "run"]

IMPLEMENTATIONS = ("flava_zoo", "transformers", "torchmultimodal")
PEER = "transformers"
PRECISIONS = ("fp32", "bf16")
CLS_ID, SEP_ID, PAD_ID, MASK_ID = 1, 2, 0, 3
PRETRAIN_WEIGHTS = {"mim": 0.0, "mlm": 0.0, "contrastive": 1.0, "itm": 1.0, "mmm_image": 1.0, "mmm_text": 1.0}
"""The multimodal stage's loss terms (what ``FlavaPretrainModule(stage="multimodal")`` trains)."""


def log(message: str) -> None:
    """Progress to stderr (stdout stays for the report)."""
    print(f"[speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


def caption_lengths(batch: int, text_length: int, seed: int = 0) -> list[int]:
    """Token counts (with [CLS] and [SEP]) of COCO-like captions under a BERT tokenizer:
    8 + Gamma(shape 2, scale 3), rounded, clipped to [8, 30] and to ``text_length``."""
    rng = random.Random(seed)
    return [min(max(8 + round(rng.gammavariate(2.0, 3.0)), 8), 30, text_length) for _ in range(batch)]


def make_inputs(cfg: Any, batch: int, text_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images, token ids and padding mask (text padded to ``text_length``, capped at the
    size's positions); the same for every implementation."""
    g = torch.Generator().manual_seed(seed)
    text_length = min(text_length, cfg.text.max_position_embeddings)
    size = cfg.image.image_size
    ids = torch.full((batch, text_length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(batch, text_length, dtype=torch.long)
    for i, n in enumerate(caption_lengths(batch, text_length, seed)):
        ids[i, 1 : n - 1] = torch.randint(MASK_ID + 1, cfg.text.vocab_size, (n - 2,), generator=g)
        ids[i, 0], ids[i, n - 1] = CLS_ID, SEP_ID
        mask[i, :n] = 1
    pixels = torch.randn(batch, cfg.image.num_channels, size, size, generator=g)
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}


def pretrain_batch(cfg: Any, batch: int, text_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`make_inputs` plus what the pretraining collator adds: an MLM-masked copy of
    the text with its labels and a block mask over the image patches (40%)."""
    from ..masking import BlockMasker, MLMMasker

    x = make_inputs(cfg, batch, text_length, seed)
    mlm = MLMMasker(cfg.text.vocab_size, MASK_ID, [CLS_ID, SEP_ID], pad_token_id=PAD_ID, seed=seed)
    x["masked_input_ids"], x["mlm_labels"] = mlm(x["input_ids"], x["attention_mask"])
    grid = cfg.image.image_size // cfg.image.patch_size
    x["image_mask"] = BlockMasker(grid, mask_ratio=0.4, min_block_patches=max(1, min(16, grid * grid // 4)), seed=seed)(batch)
    return x


def peer_pretrain_inputs(x: dict[str, torch.Tensor], mim_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """transformers' inputs for :func:`pretrain_batch`'s ``x``: the same pixels, tokens and
    masks; ITM negatives as FLAVA makes them (a seeded half of the pairs get another
    sample's text, ``itm_labels`` 0); fixed random ``mim_labels`` (no dVAE codebook)."""
    g = torch.Generator().manual_seed(seed)
    b = x["pixel_values"].shape[0]
    negative = torch.zeros(b, dtype=torch.bool)
    negative[torch.randperm(b, generator=g)[: b // 2]] = True
    source, idx = torch.arange(b), negative.nonzero().flatten()
    source[idx] = idx.roll(1) if len(idx) > 1 else (idx + 1) % b
    text = {k: x[k][source] for k in ("input_ids", "masked_input_ids", "attention_mask", "mlm_labels")}
    return {
        "pixel_values": x["pixel_values"],
        "input_ids": text["input_ids"],
        "input_ids_masked": text["masked_input_ids"],
        "attention_mask": text["attention_mask"],
        "bool_masked_pos": x["image_mask"].bool(),
        "mlm_labels": text["mlm_labels"],
        "mim_labels": torch.randint(mim_classes, x["image_mask"].shape, generator=g),
        "itm_labels": (~negative).long(),
    }


# ----------------------------------------------------------------------------- implementations


def hf_config(cfg: Any) -> Any:
    """transformers' ``FlavaConfig`` at our config's sizes, dropout off."""
    from transformers import FlavaConfig

    common = {"hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    im, tx, mm = cfg.image, cfg.text, cfg.multimodal

    def tower(c: Any, **extra: Any) -> dict[str, Any]:
        return dict(common, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                    intermediate_size=c.intermediate_size, layer_norm_eps=c.layer_norm_eps, **extra)

    return FlavaConfig(
        image_config=tower(im, image_size=im.image_size, patch_size=im.patch_size, num_channels=im.num_channels),
        text_config=tower(tx, vocab_size=tx.vocab_size, type_vocab_size=tx.type_vocab_size,
                          max_position_embeddings=tx.max_position_embeddings, pad_token_id=tx.pad_token_id),
        multimodal_config=tower(mm),
        hidden_size=mm.hidden_size,
        projection_dim=cfg.projection_dim,
        init_codebook=False,
    )


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run here (None when it can): its package is not importable."""
    module = {"flava_zoo": "flava_zoo", "transformers": "transformers", "torchmultimodal": "torchmultimodal"}[impl]
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken install counts as absent
        return f"not importable ({type(exc).__name__})"
    return None


def implementation_version(impl: str) -> str | None:
    """Installed version of the package behind ``impl`` (None where it is not installed);
    flava_zoo's own from the code that runs (an editable install's metadata can be stale)."""
    from importlib import metadata

    if impl == "flava_zoo":
        from ..version import __version__

        return __version__
    for name in {"flava_zoo": ("flava-zoo",), "transformers": ("transformers",),
                 "torchmultimodal": ("torchmultimodal", "torchmultimodal-nightly")}[impl]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def build_backbone(impl: str, size: str) -> torch.nn.Module:
    """``impl``'s FLAVA backbone (no heads) at our config of ``size``, seeded, train mode."""
    import flava_zoo

    cfg = flava_zoo.get_config(size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "flava_zoo":
            model = flava_zoo.create_model(size)
        elif impl == "transformers":
            from transformers import FlavaModel

            model = FlavaModel(hf_config(cfg))
        elif impl == "torchmultimodal":
            model = _build_torchmultimodal(cfg)
        else:
            raise ValueError(f"unknown implementation {impl!r}; use one of {IMPLEMENTATIONS}")
    return model.train()


def _build_torchmultimodal(cfg: Any) -> torch.nn.Module:
    """torchmultimodal's ``flava_model`` at our sizes. Not run where this was written (the
    package is not installed there); its keyword names follow ``flava_model``'s signature."""
    from torchmultimodal.models.flava.model import flava_model

    im, tx, mm = cfg.image, cfg.text, cfg.multimodal
    kw: dict[str, Any] = {"image_size": im.image_size, "patch_size": im.patch_size, "num_channels": im.num_channels,
                          "vocab_size": tx.vocab_size, "pad_token_id": tx.pad_token_id,
                          "type_vocab_size": tx.type_vocab_size, "max_position_embeddings": tx.max_position_embeddings,
                          "text_and_image_proj_size": cfg.projection_dim}
    for prefix, c in (("image", im), ("text", tx), ("multimodal", mm)):
        kw.update({f"{prefix}_hidden_size": c.hidden_size, f"{prefix}_num_attention_heads": c.num_heads,
                   f"{prefix}_num_hidden_layers": c.num_layers, f"{prefix}_dropout": 0.0,
                   f"{prefix}_intermediate_size": c.intermediate_size, f"{prefix}_layer_norm_eps": c.layer_norm_eps})
    return flava_model(**kw)


def backbone_loss(impl: str, model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """One scalar touching every output a forward produces: the three last hidden states and
    the two normalised class-token embeddings (projected here for the peers)."""
    if impl == "flava_zoo":
        out = model(**x)
        parts = [out.image.last_hidden_state, out.text.last_hidden_state, out.multimodal.last_hidden_state,
                 out.image.embedding, out.text.embedding]
    elif impl == "transformers":
        out = model(**x)
        parts = [out.image_embeddings, out.text_embeddings, out.multimodal_embeddings,
                 F.normalize(model.image_projection(out.image_embeddings[:, 0]), dim=-1),
                 F.normalize(model.text_projection(out.text_embeddings[:, 0]), dim=-1)]
    else:  # torchmultimodal: towers and fusion one by one (its forward runs the image tower twice)
        image = model.image_encoder(x["pixel_values"])
        text = model.text_encoder(input_ids=x["input_ids"], attention_mask=x["attention_mask"], return_hidden_states=True)
        fused = model.encode_mm(image.hidden_states[-1], text.hidden_states[-1])
        parts = [image.last_hidden_state, text.last_hidden_state, fused.last_hidden_state,
                 F.normalize(model.image_projection(image.last_hidden_state[:, 0]), dim=-1),
                 F.normalize(model.text_projection(text.last_hidden_state[:, 0]), dim=-1)]
    return sum(p.float().mean() for p in parts)


def autocast(device: str, precision: str) -> Any:
    """bf16 autocast on ``device`` for ``bf16``; nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def forward_backward(loss_fn: Any, model: torch.nn.Module, x: Any, device: str, precision: str) -> None:
    """Gradients cleared, forward (under autocast for bf16), backward."""
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = loss_fn(model, x)
    loss.backward()


def _inference(loss_fn: Any, model: torch.nn.Module, x: Any, device: str, precision: str, grad: bool = False) -> None:
    """An eval-mode forward, without grad (``grad=True`` only for counting its FLOPs:
    FlopCounterMode's module tracker fails on views of parameters made under no_grad)."""
    model.eval()
    with (nullcontext() if grad else torch.no_grad()), autocast(device, precision):
        loss_fn(model, x)


def bf16_units(device: str) -> bool:
    """Whether ``device`` has bf16 matmul units (CUDA; CPUs with AVX512-BF16 or AMX)."""
    if torch.device(device).type == "cuda":
        return True
    cpu = _provenance.cpu_info()
    return bool(cpu.get("avx512_bf16") or cpu.get("amx_bf16"))


# ----------------------------------------------------------------------------- measurements


def backbone_memory(impl: str, size: str, precision: str, batch: int, text_length: int) -> dict[str, Any]:
    """Peak-RSS rise of the first forward + backward after the build (for :func:`timing.in_child`)."""
    import flava_zoo

    model = build_backbone(impl, size)
    x = make_inputs(flava_zoo.get_config(size), batch, text_length)
    loss = lambda m, v: backbone_loss(impl, m, v)  # noqa: E731
    return timing.peak_rss_rise(lambda: forward_backward(loss, model, x, "cpu", precision))


def _useful_flops(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> int:
    """Forward + backward FLOPs of ours on the real tokens only: each sample alone, its
    padding cut off (what any implementation must compute)."""
    total = 0
    loss = lambda m, v: backbone_loss("flava_zoo", m, v)  # noqa: E731
    for j in range(x["input_ids"].shape[0]):
        n = int(x["attention_mask"][j].sum())
        one = {"pixel_values": x["pixel_values"][j : j + 1], "input_ids": x["input_ids"][j : j + 1, :n],
               "attention_mask": x["attention_mask"][j : j + 1, :n]}
        total += timing.count_flops(lambda o=one: forward_backward(loss, model, o, "cpu", "fp32"))
    model.zero_grad(set_to_none=True)
    return total


def measure_backbone(size: str, impls: list[str], s: SpeedSettings, precision: str, peak_gflops: float) -> list[dict[str, Any]]:
    """Rows of the backbone table for ``size`` at ``precision``: one per implementation."""
    import flava_zoo

    cfg, device = flava_zoo.get_config(size), s.device
    reps = s.reps_base if (s.reps_base and cfg.image.hidden_size >= 768) else s.reps
    rows, models, losses, optims = [], {}, {}, {}
    for impl in impls:
        reason = unavailable(impl)
        if reason:
            rows.append({"size": size, "precision": precision, "implementation": impl, "status": reason})
            continue
        models[impl] = build_backbone(impl, size).to(device)
        losses[impl] = lambda m, v, i=impl: backbone_loss(i, m, v)
        optims[impl] = torch.optim.AdamW(models[impl].parameters(), lr=1e-5)
    x = {k: v.to(device) for k, v in make_inputs(cfg, s.batch, s.text_length).items()}
    measured: dict[str, dict[str, Any]] = {}
    for impl, model in models.items():
        r: dict[str, Any] = {"size": size, "precision": precision, "implementation": impl, "status": "ok",
                             "version": implementation_version(impl),
                             "parameters": sum(p.numel() for p in model.parameters())}
        log(f"{size} {precision} {impl}: FLOPs and memory")
        r["forward_flops"] = timing.count_flops(lambda m=model, i=impl: _inference(losses[i], m, x, device, precision, grad=True))
        model.train()
        r["train_flops"] = timing.count_flops(lambda m=model, i=impl: forward_backward(losses[i], m, x, device, precision))
        if impl == "flava_zoo" and device == "cpu":
            r["useful_train_flops"] = _useful_flops(model, x)
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            mem = timing.cuda_peak_rise(lambda m=model, i=impl: forward_backward(losses[i], m, x, device, precision), device)
            model.zero_grad(set_to_none=True)
        elif s.isolate:
            mem = timing.in_child("flava_zoo.bench.speed:backbone_memory",
                                  dict(impl=impl, size=size, precision=precision, batch=s.batch, text_length=s.text_length))
        else:
            mem = timing.peak_rss_rise(lambda m=model, i=impl: forward_backward(losses[i], m, x, device, precision))
            model.zero_grad(set_to_none=True)
        r["peak_mib"], r["memory_method"] = mem["peak_mib"], mem["method"] + (", fresh process" if s.isolate and device == "cpu" else "")
        measured[impl] = r

    def train_fn(impl: str) -> Any:
        def step() -> None:
            models[impl].train()
            forward_backward(losses[impl], models[impl], x, device, precision)
            optims[impl].step()
        return step

    fns: dict[str, Any] = {}
    for impl in models:
        fns[f"{impl}/forward"] = lambda i=impl: _inference(losses[i], models[i], x, device, precision)
        fns[f"{impl}/train"] = train_fn(impl)
    log(f"{size} {precision}: timing {s.warmup} warm-up + {reps} rounds, interleaved")
    times = timing.interleave(fns, warmup=s.warmup, reps=reps, device=device, budget_s=s.cell_seconds,
                              log=lambda m: log(f"  {size} {precision} {m}"))
    useful = measured.get("flava_zoo", {}).get("useful_train_flops")
    for impl, r in measured.items():
        fwd, train = timing.summarize(times[f"{impl}/forward"]), timing.summarize(times[f"{impl}/train"])
        r.update(forward=fwd, train=train, forward_s=times[f"{impl}/forward"], train_s=times[f"{impl}/train"])
        r["throughput_samples_per_s"] = round(s.batch / (fwd["ms_median"] / 1e3), 2)
        r["forward_flops_per_sample"] = round(r["forward_flops"] / s.batch)
        r["train_flops_per_sample"] = round(r["train_flops"] / s.batch)
        rate = 1e3 / train["ms_median"]  # train steps per second
        r["train_tflops"] = round(r["train_flops"] * rate / 1e12, 5)
        r["frac_peak_own"] = round(r["train_flops"] * rate / (peak_gflops * 1e9), 4) if peak_gflops else None
        if useful:
            r["frac_peak_useful"] = round(useful * rate / (peak_gflops * 1e9), 4) if peak_gflops else None
    ours = measured.get("flava_zoo")
    for impl, r in measured.items():
        if ours is not None and impl != "flava_zoo":  # ours against this peer, stored on both rows
            versus = {
                "train_speedup": timing.paired_ratio(r["train_s"], ours["train_s"]),
                "forward_speedup": timing.paired_ratio(r["forward_s"], ours["forward_s"]),
                "memory_ratio": round(ours["peak_mib"] / r["peak_mib"], 3) if r["peak_mib"] > 0 else None,
                "flops_ratio": round(ours["train_flops"] / r["train_flops"], 3),
            }
            r["ours_vs_this"] = versus
            ours.setdefault("ours_vs", {})[impl] = versus
        rows.append(r)
    return sorted(rows, key=lambda r: IMPLEMENTATIONS.index(r["implementation"]))


def build_pretrain(impl: str, size: str) -> tuple[torch.nn.Module, Any]:
    """``impl``'s pretraining model at our config of ``size`` and its loss function:
    ours is :class:`FlavaForPretraining` with the multimodal stage's terms; transformers'
    is ``FlavaForPreTraining`` without a codebook (MIM over ``patch**2 * channels`` classes,
    the width of our pixel-regression head)."""
    import flava_zoo

    torch.manual_seed(0)
    if impl == "flava_zoo":
        from ..models.pretraining import FlavaForPretraining

        return FlavaForPretraining(flava_zoo.create_model(size), PRETRAIN_WEIGHTS).train(), lambda m, b: m(b).loss
    if impl != "transformers":
        raise ValueError(f"no pretraining model for {impl!r}: use flava_zoo or transformers")
    from transformers import FlavaForPreTraining

    cfg = flava_zoo.get_config(size)
    hf = hf_config(cfg)
    hf.image_config.vocab_size = cfg.image.patch_size**2 * cfg.image.num_channels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FlavaForPreTraining(hf).train(), lambda m, b: m(**b).loss


SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
}
"""aten op -> name of the fused SDPA kernel (unfused attention shows as plain matmuls: ``math``)."""


def sdpa_kernels(by_op: dict[str, int]) -> list[str]:
    """The fused SDPA kernels among :func:`timing.flop_counts`' ops, or ``["math"]`` when the
    attention ran as plain matmuls (SDPA's math path, or transformers' eager attention)."""
    ops = {op.split(".")[-1].removesuffix("_backward") for op in by_op}
    found = {name for k, name in SDPA_KERNELS.items() if k in ops}
    return sorted(found) or ["math"]


def flash_only(fn: Any) -> str:
    """``ok`` when ``fn()`` runs with SDPA restricted to its flash backend
    (``torch.nn.attention.sdpa_kernel``), else why not (e.g. a padding mask it cannot take)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fn()
    except RuntimeError as exc:
        return "no: " + str(exc).strip().splitlines()[0][:120]
    return "ok"


def _compiled(loss: Any, model: torch.nn.Module, backend: str) -> Any:
    """``loss`` evaluated through ``torch.compile(model, backend=backend)`` (same weights);
    the model argument it is called with is ignored in favour of the compiled one."""
    compiled = torch.compile(model, backend=backend)
    return lambda _model, x: loss(compiled, x)


def measure_pretrain(size: str, s: SpeedSettings, precision: str, peak_gflops: float) -> list[dict[str, Any]]:
    """Rows of the pretraining table: our multimodal pretraining step against transformers'
    ``FlavaForPreTraining`` (and each compiled, for the implementations in ``s.compile``),
    interleaved; step time, samples/s, FLOPs, share of the matmul peak, SDPA kernels."""
    import flava_zoo

    cfg, device, b = flava_zoo.get_config(size), s.device, s.pretrain_batch
    ours_x = {k: v.to(device) for k, v in pretrain_batch(cfg, b, s.text_length).items()}
    peer_x = {k: v.to(device) for k, v in peer_pretrain_inputs(ours_x | {}, cfg.image.patch_size**2 * cfg.image.num_channels).items()}
    from ..training.optim import param_groups

    variants, rows = {}, []
    for impl in ("flava_zoo", PEER):
        reason = unavailable(impl)
        if reason:
            rows.append({"size": size, "precision": precision, "implementation": impl, "status": reason})
            continue
        model, loss = build_pretrain(impl, size)
        model.to(device)
        groups = [{k: v for k, v in g.items() if k != "param_names"} for g in param_groups(model, 1e-4, 0.1)]
        opt = torch.optim.AdamW(groups, lr=1e-4, fused=device == "cuda")
        x = ours_x if impl == "flava_zoo" else peer_x
        variants[impl] = (model, loss, opt, x)
        if impl in s.compile:
            variants[f"{impl}+compile"] = (model, _compiled(loss, model, s.compile_backend), opt, x)
    measured = {}
    for name, (model, loss, _, x) in variants.items():
        log(f"pretrain {size} {precision} {name}: FLOPs, SDPA kernels, memory")
        r = {"size": size, "precision": precision, "implementation": name, "status": "ok", "batch": b,
             "parameters": sum(p.numel() for p in model.parameters())}
        if "+compile" in name:  # compile before timing (the first calls compile); FLOPs as eager
            t0 = time.perf_counter()
            for _ in range(2):
                forward_backward(loss, model, x, device, precision)
            timing.synchronize(device)
            r["compile_s"] = round(time.perf_counter() - t0, 1)
            r["flops"], r["sdpa"] = measured[name.split("+")[0]]["flops"], ["compiled"]
        else:
            r["flops"], by_op = timing.flop_counts(lambda m=model, f=loss, v=x: forward_backward(f, m, v, device, precision))
            r["sdpa"] = sdpa_kernels(by_op)
            if name == "flava_zoo":
                r["flash_only"] = flash_only(lambda m=model, f=loss, v=x: forward_backward(f, m, v, device, precision))
        if device == "cuda":
            r["peak_mib"] = timing.cuda_peak_rise(lambda m=model, f=loss, v=x: forward_backward(f, m, v, device, precision), device)["peak_mib"]
        model.zero_grad(set_to_none=True)
        measured[name] = r

    def step(name: str) -> Any:
        model, loss, opt, x = variants[name]

        def run_step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                out = loss(model, x)
            out.backward()
            opt.step()
        return run_step

    log(f"pretrain {size} {precision}: {s.pretrain_warmup} warm-up + {s.pretrain_reps} rounds of {list(variants)}")
    times = timing.interleave({n: step(n) for n in variants}, warmup=s.pretrain_warmup, reps=s.pretrain_reps,
                              device=device, log=lambda m: log(f"  pretrain {m}"))
    for name, r in measured.items():
        t = timing.summarize(times[name])
        rate = 1e3 / t["ms_median"]
        r.update(step=t, step_s=times[name], samples_per_s=round(b * rate, 2), tflops=round(r["flops"] * rate / 1e12, 4),
                 frac_peak=round(r["flops"] * rate / (peak_gflops * 1e9), 4) if peak_gflops else None)
        if s.nominal_peak_tflops:
            r["mfu_nominal"] = round(r["flops"] * rate / (s.nominal_peak_tflops * 1e12), 4)
        if name != "flava_zoo" and "flava_zoo" in measured:
            r["speedup_of_ours"] = timing.paired_ratio(times[name], times["flava_zoo"])
        rows.append(r)
    return rows


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class SpeedSettings:
    """What one run measures (the command line of ``benchmarks/speed.py`` fills it)."""

    sizes: list[str] = dataclasses.field(default_factory=lambda: ["flava-tiny", "flava-small", "flava-base"])
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32", "bf16"])
    implementations: list[str] = dataclasses.field(default_factory=lambda: list(IMPLEMENTATIONS))
    device: str = "cpu"
    batch: int = 8
    text_length: int = 77
    warmup: int = 1
    reps: int = 5
    reps_base: int | None = None
    cell_seconds: float | None = None
    isolate: bool = True
    peak_sizes: list[int] = dataclasses.field(default_factory=lambda: [1024, 2048, 3072])
    pretrain_sizes: list[str] = dataclasses.field(default_factory=lambda: ["flava-tiny"])
    pretrain_batch: int = 64
    pretrain_warmup: int = 2
    pretrain_reps: int = 10
    compile: list[str] = dataclasses.field(default_factory=list)
    compile_backend: str = "inductor"
    nominal_peak_tflops: float | None = None
    data: bool = True
    data_batches: int = 50
    data_train_size: int = 20_000
    wds_samples: int = 512

    def __post_init__(self) -> None:
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ValueError(f"unknown precision {p!r}; use one of {PRECISIONS}")
        for i in self.implementations:
            if i not in IMPLEMENTATIONS:
                raise ValueError(f"unknown implementation {i!r}; use one of {IMPLEMENTATIONS}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda: torch.cuda.is_available() is False")


def run(s: SpeedSettings, command: str, progress: Any = None) -> dict[str, Any]:
    """Everything :class:`SpeedSettings` asks for, in one process; the report (see
    :mod:`flava_zoo.bench.speed_report`). ``command`` is recorded as given; ``progress``
    (e.g. a report writer) gets the partial report (``complete`` False) after each section,
    so that an interrupted run keeps its rows."""
    import flava_zoo

    for size in {*s.sizes, *s.pretrain_sizes}:
        flava_zoo.get_config(size)  # fail early on unknown names
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.time()
    report: dict[str, Any] = {
        "command": command, "git": _provenance.git_state(), "started": started,
        "machine": _provenance.machine(s.device), "settings": dataclasses.asdict(s),
        "caption_lengths": caption_lengths(s.batch, s.text_length),
        "versions": {i: implementation_version(i) or "not installed" for i in IMPLEMENTATIONS},
        "matmul_peak": {}, "backbone": [], "pretrain": [], "data": [], "notes": [], "complete": False,
    }

    def checkpoint() -> None:
        if progress is not None:
            progress(report)

    log(f"{s.device}, {torch.get_num_threads()} threads, load average {_provenance.load_average()}")
    units = bf16_units(s.device)
    for p in s.precisions:
        dtype = torch.float32 if p == "fp32" else torch.bfloat16
        sizes = s.peak_sizes if (p == "fp32" or units) else [min(s.peak_sizes)]
        report["matmul_peak"][p] = timing.matmul_peak(dtype, sizes, s.device)
        log(f"matmul peak {p}: {report['matmul_peak'][p]['gflops']} GFLOP/s")
    if not units:
        report["notes"].append("this CPU has neither AVX512-BF16 nor AMX: bf16 rows are not measured "
                               "(bf16 matmuls run on a slow fallback); they wait for such a CPU")
    for size in s.pretrain_sizes:
        for p in s.precisions:
            if p == "bf16" and not units:
                report["pretrain"].append({"size": size, "precision": p, "implementation": "flava_zoo",
                                           "status": "not measured: no bf16 units"})
                continue
            report["pretrain"] += measure_pretrain(size, s, p, report["matmul_peak"][p]["gflops"])
            checkpoint()
    if s.data:
        from . import dataload

        report["data"] = dataload.measure_data(s.pretrain_batch, s.data_batches, s.data_train_size, s.wds_samples)
        ours = next((r for r in report["pretrain"] if r["implementation"] == "flava_zoo" and r["status"] == "ok"), None)
        for row in report["data"]:
            if ours is not None:
                row["model"] = f"{ours['size']} {ours['precision']} pretraining step, batch {ours['batch']}"
                row["model_samples_per_s"] = ours["samples_per_s"]
                row["workers_needed"] = max(1, math.ceil(ours["samples_per_s"] / row["samples_per_s"] * (1 - 1e-9)))
        checkpoint()
    for size in s.sizes:
        for p in s.precisions:
            if p == "bf16" and not units:
                report["backbone"] += [{"size": size, "precision": p, "implementation": i,
                                        "status": "not measured: no bf16 units"} for i in s.implementations]
                continue
            report["backbone"] += measure_backbone(size, s.implementations, s, p, report["matmul_peak"][p]["gflops"])
            checkpoint()
    report["matmul_peak_at_end"] = {
        p: timing.matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, s.peak_sizes, s.device)["gflops"]
        for p in s.precisions if p == "fp32" or units}
    report["load_average_end"] = _provenance.load_average()
    report["finished"], report["duration_s"] = time.strftime("%Y-%m-%d %H:%M:%S %Z"), round(time.time() - t0, 1)
    report["complete"] = True
    return report
