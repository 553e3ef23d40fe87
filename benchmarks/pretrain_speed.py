"""Pretraining throughput: data samples/s of one loader worker against the model's step.

Answers "is the data pipeline fast enough not to starve training?" for multimodal
pretraining of ``flava-tiny`` (64 px images, 16 px patches), in one run:

* **data**, one worker: samples/s of the pipeline as a DataLoader worker runs it (here in
  the main process, ``num_workers=0``, with one torch thread, as PyTorch gives each worker),
  ``--data-warmup`` batches untimed, then ``--data-batches`` batches of ``--batch-size``:

  - ``shapes``: :class:`~flava_zoo.data.datamodules.ShapesPretrainData`, multimodal stage
    (render the scene, transform, draw a caption, tokenise, mask text and image patches);
  - ``webdataset``: :class:`~flava_zoo.data.real.WebDatasetPairsDataModule` reading tar
    shards written first into a temporary folder from shapes-world images (``--wds-format``
    JPEG or PNG) and their captions (a ``json`` member with a ``captions`` list): read the tar,
    decode, random resized crop (the training default), shuffle buffer, tokenise, mask.
    The shards are small and sit in the page cache: no disk or network time is included.

* **model**: samples/s of one multimodal pretraining step of :class:`FlavaPretrainModule`'s
  objective (:class:`~flava_zoo.models.pretraining.FlavaForPretraining`, stage
  ``multimodal``: contrastive, ITM, MMM-image and MMM-text) with its AdamW step, on batches
  of the shapes pipeline, at ``--threads`` torch threads; ``--model-warmup`` untimed steps,
  then the median of ``--model-steps``.

* **workers needed** to keep one trainer fed: ``ceil(model samples/s / data samples/s per
  worker)``.

* ``--peer``: the same step with transformers' ``FlavaForPreTraining`` at the same sizes
  (``model_speed.hf_config``), steps interleaved with ours (alternating which goes first),
  on the equivalent inputs: ``pixel_values``, ``input_ids``, ``input_ids_masked``,
  ``attention_mask``, ``bool_masked_pos``, ``mlm_labels``, ``itm_labels`` and ``mim_labels``.
  On image-text pairs it computes the same four terms as ours. Its MIM targets are codebook
  classes; instead of a (randomly initialised, pointless) dVAE codebook it gets fixed random
  ``mim_labels`` over ``patch_size**2 * channels`` classes, so its MMM-image head has the
  shape of ours (which regresses normalised pixels of that width). Its ITM follows FLAVA:
  the batch carries its negatives (a seeded half of the pairs get another sample's text,
  ``itm_labels`` 0) and MMM / contrastive use the positives only. Ours (its default
  ``itm_negatives="swap"``) also swaps half the texts for ITM and runs one fusion pass with
  MMM on the matched half, but only after the unmasked towers ran, so its contrastive loss
  sees all ``B`` pairs. The FLOPs of one step of each are counted
  (``model_speed.count_flops``) so the work can be compared.

    python benchmarks/pretrain_speed.py --batch-size 64 --data-batches 50 \\
        --model-steps 20 --peer --out benchmarks/results/pretrain_speed

writes ``pretrain_speed.md`` and ``pretrain_speed.json``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_speed  # noqa: E402

MODEL = "flava-tiny"
FEED_HEADER = (
    "| data source | data samples/s per worker | model samples/s | data / model | workers needed |"
)
"""Header of the report's main table (one row per data source)."""
STEP_HEADER = (
    "| step | threads | ms per step (median) | samples/s | GFLOPs per step | CPU share "
    "| speed vs ours |"
)
"""Header of the report's model-step table."""


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean."""
    print(f"[pretrain_speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def workers_needed(model_rate: float, data_rate: float) -> int:
    """Loader workers that keep one trainer fed: ``ceil(model_rate / data_rate)``, at least 1.

    A relative tolerance of 1e-9 keeps an exact ratio (2.0 computed as 2.0000000001) from
    rounding up.
    """
    if data_rate <= 0:
        raise ValueError(f"data rate must be positive, got {data_rate}")
    return max(1, math.ceil(model_rate / data_rate * (1 - 1e-9)))


# ----------------------------------------------------------------------------- data


def time_batches(batches: Iterable[Any], warmup: int, count: int) -> tuple[dict[str, Any], list]:
    """Pull ``warmup`` untimed then ``count`` timed batches; rates over the timed ones.

    Returns the measurement (samples, seconds, samples/s, ms per batch, CPU share of the
    wall time) and the timed batches themselves.
    """
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    kept, walls = [], []
    samples = 0
    c0 = time.process_time()
    for _ in range(count):
        t0 = time.perf_counter()
        batch = next(iterator)
        walls.append(time.perf_counter() - t0)
        samples += int(batch["pixel_values"].shape[0])
        kept.append(batch)
    cpu = time.process_time() - c0
    wall = sum(walls)
    return (
        {
            "batches": count,
            "samples": samples,
            "seconds": round(wall, 4),
            "samples_per_s": samples / wall,
            "ms_per_batch_median": 1000 * statistics.median(walls),
            "ms_per_batch": [round(1000 * w, 2) for w in walls],
            "cpu_share": cpu / wall,
        },
        kept,
    )


def write_shards(
    world: Any, folder: Path, samples: int, shards: int, fmt: str, split: str = "train"
) -> dict[str, Any]:
    """Webdataset tar shards of the first ``samples`` scenes of ``split``: an image member
    (``jpg`` at quality 90, or ``png``) and a ``json`` member with the scene's captions."""
    if fmt not in ("jpg", "png"):
        raise ValueError(f"shard image format must be jpg or png, got {fmt!r}")
    if not 1 <= shards <= samples:
        raise ValueError(f"need 1 <= shards <= samples, got {shards} shards for {samples}")
    if samples > world.split_size(split):
        raise ValueError(
            f"{samples} shard samples but the world's {split} split has "
            f"{world.split_size(split)} scenes"
        )
    folder.mkdir(parents=True, exist_ok=True)
    paths, image_bytes = [], 0
    for s in range(shards):
        path = folder / f"shapes-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, samples, shards):
                buffer = io.BytesIO()
                image = world.image(split, i)
                if fmt == "jpg":
                    image.save(buffer, format="JPEG", quality=90)
                else:
                    image.save(buffer, format="PNG")
                meta = json.dumps({"captions": world.scene_captions(split, i)}).encode()
                image_bytes += buffer.tell()
                for name, data in ((f"{i:07d}.{fmt}", buffer.getvalue()), (f"{i:07d}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return {
        "shards": paths,
        "samples": samples,
        "format": fmt,
        "image_size": world.image_size,
        "mean_image_bytes": image_bytes / samples,
        "total_bytes": sum(Path(p).stat().st_size for p in paths),
    }


def with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` with ``threads`` torch threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- model step


def tensors_only(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (drops ``num_skipped``)."""
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def build_ours(vocab_size: int, lr: float, weight_decay: float) -> tuple[Any, Any]:
    """The multimodal-stage :class:`FlavaPretrainModule` and the AdamW optimizer its
    ``configure_optimizers`` would build (param groups without weight decay on norms,
    biases and embeddings; frozen heads left out)."""
    from flava_zoo.training import FlavaPretrainModule
    from flava_zoo.training.optim import param_groups

    torch.manual_seed(0)
    module = FlavaPretrainModule(
        model=MODEL,
        model_overrides={"text.vocab_size": vocab_size},
        stage="multimodal",
        lr=lr,
        weight_decay=weight_decay,
    ).train()
    groups = param_groups(module.objective, lr, weight_decay)
    for group in groups:
        group.pop("param_names")
    return module, torch.optim.AdamW(groups, lr=lr)


def build_peer(cfg: Any, lr: float, weight_decay: float) -> tuple[Any, Any]:
    """transformers' ``FlavaForPreTraining`` at our sizes (no codebook; MIM over
    ``patch_size**2 * channels`` classes) and AdamW with the same param groups."""
    from transformers import FlavaForPreTraining

    from flava_zoo.training.optim import param_groups

    hf = model_speed.hf_config(cfg)
    hf.image_config.vocab_size = cfg.image.patch_size**2 * cfg.image.num_channels
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FlavaForPreTraining(hf).train()
    groups = param_groups(model, lr, weight_decay)
    for group in groups:
        group.pop("param_names")
    return model, torch.optim.AdamW(groups, lr=lr)


def peer_inputs(batch: dict[str, torch.Tensor], mim_classes: int, seed: int) -> dict[str, Any]:
    """transformers' inputs for our collated ``batch``: the same pixels, tokens and masks;
    ITM negatives as FLAVA makes them (a seeded half of the pairs get the text of another
    sample, ``itm_labels`` 0); fixed random ``mim_labels`` in ``[0, mim_classes)``."""
    g = torch.Generator().manual_seed(seed)
    b = batch["pixel_values"].shape[0]
    negative = torch.zeros(b, dtype=torch.bool)
    negative[torch.randperm(b, generator=g)[: b // 2]] = True
    source = torch.arange(b)
    idx = negative.nonzero().flatten()
    if len(idx) > 1:
        source[idx] = idx.roll(1)  # negatives swap texts among themselves
    elif len(idx) == 1:
        source[idx] = (idx + 1) % b
    text = {
        k: batch[k][source]
        for k in ("input_ids", "masked_input_ids", "attention_mask", "mlm_labels")
    }
    n = batch["image_mask"].shape[1]
    return {
        "pixel_values": batch["pixel_values"],
        "input_ids": text["input_ids"],
        "input_ids_masked": text["masked_input_ids"],
        "attention_mask": text["attention_mask"],
        "bool_masked_pos": batch["image_mask"].bool(),
        "mlm_labels": text["mlm_labels"],
        "mim_labels": torch.randint(mim_classes, (b, n), generator=g),
        "itm_labels": (~negative).long(),
    }


def ours_loss(module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Our pretraining loss on ``batch`` (what ``training_step`` optimises)."""
    return module.objective(batch).loss


def peer_loss(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """transformers' pretraining loss on ``inputs``."""
    return model(**inputs).loss


def train_step(loss_fn: Callable[[Any, Any], torch.Tensor], model: Any, optimizer: Any, x: Any):
    """Gradients cleared, forward, backward, AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, x)
    loss.backward()
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    impls: dict[str, tuple[Callable, Any, Any, list]],
    warmup: int,
    steps: int,
    threads: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Interleaved training steps of each implementation (the order alternating per
    repetition), cycling through its inputs; wall times and CPU shares of the timed ones."""
    names = list(impls)
    times: dict[str, list[float]] = {n: [] for n in names}
    shares: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + steps):
        for name in names if r % 2 == 0 else names[::-1]:
            loss_fn, model, optimizer, inputs = impls[name]
            x = inputs[r % len(inputs)]
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            train_step(loss_fn, model, optimizer, x)
            _sync(device)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if r >= warmup:
                times[name].append(wall)
                shares[name].append(cpu / (wall * threads))
        if r >= warmup:
            log(
                f"  step {r - warmup + 1}/{steps}: "
                + ", ".join(f"{n} {times[n][-1] * 1000:.0f} ms" for n in names)
            )
    return {
        n: {
            "ms_median": 1000 * statistics.median(times[n]),
            "ms_min": 1000 * min(times[n]),
            "ms_all": [round(1000 * t, 2) for t in times[n]],
            "cpu_share_median": statistics.median(shares[n]),
        }
        for n in names
    }


def step_flops(loss_fn: Callable, model: Any, x: Any) -> int:
    """FLOPs of one forward + backward (no optimizer step, gradients cleared after)."""

    def run() -> None:
        """One forward + backward."""
        model.zero_grad(set_to_none=True)
        loss_fn(model, x).backward()

    flops = model_speed.count_flops(run)
    model.zero_grad(set_to_none=True)
    return flops


# ----------------------------------------------------------------------------- report


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the feed table, the step table, settings and environment."""
    s, env = report["settings"], report["environment"]
    lines = [
        "# Pretraining throughput: data per worker vs the model step",
        "",
        f"Multimodal pretraining of `{MODEL}` ({s['image_size']} px images, patch "
        f"{s['patch_size']}), batch {s['batch_size']}. Data: {s['data_batches']} batches "
        f"after {s['data_warmup']} warm-up, in one process with 1 torch thread (what a "
        "DataLoader worker gets). Model: our multimodal-stage step (contrastive, ITM, "
        f"MMM-image, MMM-text; forward, backward, AdamW) on `{s['device']}` with "
        f"{s['threads']} torch thread{'s' if s['threads'] != 1 else ''}, median of "
        f"{s['model_steps']} steps after {s['model_warmup']} warm-up.",
        "",
        FEED_HEADER,
        "|---|---:|---:|---:|---:|",
    ]
    ours_rate = report["model"]["ours"]["samples_per_s"]
    for row in report["data"]:
        lines.append(
            f"| {row['source']} | {row['samples_per_s']:.0f} | {ours_rate:.0f} "
            f"| {row['data_over_model']:.2f} | {row['workers_needed']} |"
        )
    lines += ["", STEP_HEADER, "|---|---:|---:|---:|---:|---:|---:|"]
    labels = {
        "ours": "ours: flava_zoo FlavaForPretraining",
        "peer": "peer: transformers FlavaForPreTraining",
    }
    for name, row in report["model"].items():
        gflops = f"{row['flops'] / 1e9:.2f}" if row.get("flops") is not None else "-"
        speed = "1.00x" if name == "ours" else f"{report['speed_ratio']:.2f}x"
        lines.append(
            f"| {labels[name]} | {s['threads']} | {row['ms_median']:.0f} "
            f"| {row['samples_per_s']:.0f} | {gflops} | {row['cpu_share_median']:.2f} | {speed} |"
        )
    if "peer" in report["model"]:
        lines.append("")
        lines.append(
            f"Speed vs ours is the peer's median step time over ours "
            f"({report['speed_ratio']:.2f}x: >1 means ours is faster; the median of the "
            f"per-repetition ratios is {report['speed_ratio_paired_median']:.2f}x)."
        )
    for row in report["data"]:
        if row["source"].startswith("webdataset"):
            w = row["shards"]
            lines += [
                "",
                f"Webdataset shards: {w['samples']} samples in {len(w['shards'])} tar shards, "
                f"{w['format']} images of {w['image_size']} px (mean {w['mean_image_bytes']:.0f} "
                f"bytes), {w['total_bytes'] / 2**20:.1f} MiB in all, read from the page cache.",
            ]
    lines += [
        "",
        "How to read it: 'data samples/s per worker' is the throughput of one worker's "
        "pipeline over the timed batches; 'workers needed' = ceil(model samples/s / data "
        "samples/s per worker), the DataLoader workers that keep one trainer fed. Each "
        "worker needs its own core besides the trainer's threads: on a machine with few cores "
        "the workers and the step compete for them. CPU share is process CPU time / (threads "
        "x wall): well below 1, other processes took the cores.",
        "",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    lines += [
        f"- command: `{report['command']}`",
        f"- git commit: {report['git_commit']}"
        + (" (with uncommitted changes)" if report["git_dirty"] else "")
        + f"; torch {env['torch']}"
        + (f", transformers {env['transformers']}" if env.get("transformers") else "")
        + f", Python {env['python']}",
        f"- CPU: {env['cpu']['model']}, {env['cpu']['logical_cpus']} logical CPUs, torch "
        f"threads {s['threads']} for the model, 1 for the data",
        f"- load average at start {env['load_average_start']}, at end "
        f"{env['load_average_end']}; CPU pressure (PSI some avg10, %) at start "
        f"{env['cpu_pressure_start']}, at end {env['cpu_pressure_end']}",
        f"- started {report['started']}, finished {report['finished']} "
        f"({report['duration_s']:.0f} s)",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-batches", type=int, default=50, help="timed batches per data source")
    p.add_argument("--data-warmup", type=int, default=1, help="untimed batches first")
    p.add_argument("--model-steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--model-warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--peer", action="store_true", help="also time transformers' FlavaForPreTraining"
    )
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs of a step")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for the model step")
    p.add_argument("--device", default="cpu", help="device of the model step (cpu, cuda)")
    p.add_argument(
        "--train-size",
        type=int,
        default=20_000,
        help="shapes-world training scenes (ShapesPretrainData's default; the tokenizer is "
        "trained on their captions)",
    )
    p.add_argument("--wds-samples", type=int, default=512, help="samples written to the shards")
    p.add_argument("--wds-shards", type=int, default=4)
    p.add_argument("--wds-format", default="jpg", choices=("jpg", "png"))
    p.add_argument(
        "--wds-image-size",
        type=int,
        default=None,
        help="side of the images stored in the shards (default: the model's, 64)",
    )
    p.add_argument("--wds-shuffle-buffer", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument(
        "--out",
        default="benchmarks/results/pretrain_speed",
        help="output path without extension: writes .md and .json",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, write ``--out`` .json and .md, print the Markdown; returns the report.

    The caller's torch thread count is restored at the end.
    """
    args = parse_args(argv)
    before = torch.get_num_threads()
    try:
        return measure(args, argv)
    finally:
        torch.set_num_threads(before)


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """The whole run for parsed ``args`` (``argv`` is recorded as the command line)."""
    if min(args.batch_size, args.data_batches, args.model_steps) < 1:
        raise ValueError("--batch-size, --data-batches and --model-steps must be at least 1")
    import flava_zoo
    from flava_zoo.data.datamodules import ShapesPretrainData
    from flava_zoo.data.real import WebDatasetPairsDataModule
    from flava_zoo.data.shapes import ShapesWorld

    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.time()
    load_start, pressure_start = model_speed.load_average(), model_speed.cpu_pressure()
    device = torch.device(args.device)
    cfg = flava_zoo.get_config(MODEL)
    image_size, patch_size = cfg.image.image_size, cfg.image.patch_size
    max_length = min(48, cfg.text.max_position_embeddings)
    notes: list[str] = []
    log(f"threads {args.threads}, load average {load_start}")

    # ---- data: shapes world
    log(f"shapes world: {args.train_size} training scenes, training the tokenizer")
    shapes = ShapesPretrainData(
        stage="multimodal",
        image_size=image_size,
        patch_size=patch_size,
        train_size=args.train_size,
        val_size=max(args.batch_size, 16),
        batch_size=args.batch_size,
        num_workers=0,
        max_length=max_length,
    )
    needed = (args.data_warmup + args.data_batches) * args.batch_size
    if needed > args.train_size:
        raise ValueError(f"{needed} shapes samples needed but --train-size is {args.train_size}")
    log(f"shapes: timing {args.data_batches} batches of {args.batch_size}")
    shapes_row, batches = with_threads(
        1, lambda: time_batches(shapes.train_dataloader(), args.data_warmup, args.data_batches)
    )
    shapes_row["source"] = "shapes world (render, transform, tokenise, mask)"
    log(f"shapes: {shapes_row['samples_per_s']:.0f} samples/s per worker")

    # ---- data: webdataset shards
    with tempfile.TemporaryDirectory(prefix="pretrain_speed_") as tmp:
        root = Path(tmp)
        wds_size = args.wds_image_size or image_size
        world = (
            shapes.world
            if wds_size == image_size
            else ShapesWorld(seed=0, image_size=wds_size, sizes={"train": args.wds_samples})
        )
        shards = write_shards(
            world, root / "shards", args.wds_samples, args.wds_shards, args.wds_format
        )
        shapes.tokenizer.save(root / "tokenizer")
        wds_data = WebDatasetPairsDataModule(
            shards["shards"],
            str(root / "tokenizer"),
            image_size=image_size,
            patch_size=patch_size,
            batch_size=args.batch_size,
            num_workers=0,
            max_length=max_length,
            shuffle_buffer=args.wds_shuffle_buffer,
            batches_per_epoch=args.data_warmup + args.data_batches,
        )
        log(f"webdataset: timing {args.data_batches} batches of {args.batch_size}")
        wds_row, _ = with_threads(
            1,
            lambda: time_batches(wds_data.train_dataloader(), args.data_warmup, args.data_batches),
        )
    wds_row["source"] = f"webdataset shards ({args.wds_format}: read, decode, crop, tokenise, mask)"
    wds_row["shards"] = dict(shards, shards=[Path(p).name for p in shards["shards"]])
    log(f"webdataset: {wds_row['samples_per_s']:.0f} samples/s per worker")

    # ---- model steps
    torch.set_num_threads(args.threads)
    vocab_size = shapes.tokenizer.vocab_size
    module, optimizer = build_ours(vocab_size, args.lr, args.weight_decay)
    module.to(device)
    inputs = [tensors_only(b, device) for b in batches]
    impls: dict[str, tuple[Callable, Any, Any, list]] = {
        "ours": (ours_loss, module, optimizer, inputs)
    }
    transformers_version = None
    if args.peer:
        import transformers

        transformers_version = transformers.__version__
        peer_cfg = flava_zoo.get_config(MODEL, **{"text.vocab_size": vocab_size})
        peer, peer_opt = build_peer(peer_cfg, args.lr, args.weight_decay)
        peer.to(device)
        mim_classes = patch_size**2 * cfg.image.num_channels
        peer_x = []
        for i, b in enumerate(batches):
            x = peer_inputs(tensors_only(b, torch.device("cpu")), mim_classes, seed=i)
            peer_x.append({k: v.to(device) for k, v in x.items()})
        impls["peer"] = (peer_loss, peer, peer_opt, peer_x)
        notes.append(
            "peer: transformers FlavaForPreTraining at the same sizes, eager attention, "
            "dropout 0, no codebook: fixed random mim_labels over "
            f"{mim_classes} classes (our MMM-image head's width); ITM negatives in the batch "
            "(a seeded half of the pairs, texts swapped), MMM and contrastive on the positives; "
            "ours (itm_negatives='swap'): the same single fusion pass with half the texts "
            "swapped and MMM on the matched half, contrastive on all pairs"
        )
    log(
        f"model: {args.model_warmup} warm-up + {args.model_steps} steps of "
        + " and ".join(impls)
        + (", interleaved" if len(impls) > 1 else "")
    )
    steps = time_steps(impls, args.model_warmup, args.model_steps, args.threads, device)
    model_rows: dict[str, dict[str, Any]] = {}
    for name, (loss_fn, model, _, xs) in impls.items():
        row = steps[name]
        row["samples_per_s"] = args.batch_size / (row["ms_median"] / 1000)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["flops"] = None if args.no_flops else step_flops(loss_fn, model, xs[0])
        model_rows[name] = row
    model_rate = model_rows["ours"]["samples_per_s"]
    data_rows = []
    for row in (shapes_row, wds_row):
        row["data_over_model"] = row["samples_per_s"] / model_rate
        row["workers_needed"] = workers_needed(model_rate, row["samples_per_s"])
        if "peer" in model_rows:
            row["workers_needed_peer"] = workers_needed(
                model_rows["peer"]["samples_per_s"], row["samples_per_s"]
            )
        data_rows.append(row)
    log(
        f"model: ours {model_rows['ours']['ms_median']:.0f} ms/step = {model_rate:.0f} samples/s; "
        + ", ".join(f"{r['source'].split(' (')[0]} needs {r['workers_needed']}" for r in data_rows)
    )

    report: dict[str, Any] = {
        "command": shlex.join(
            ["python", "benchmarks/pretrain_speed.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "git_commit": model_speed.git_commit(),
        "git_dirty": model_speed.git_dirty(),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.time() - t_start, 1),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers_version,
            "python": platform.python_version(),
            "cpu": model_speed.cpu_info(),
            "load_average_start": load_start,
            "load_average_end": model_speed.load_average(),
            "cpu_pressure_start": pressure_start,
            "cpu_pressure_end": model_speed.cpu_pressure(),
        },
        "settings": {
            "model": MODEL,
            "image_size": image_size,
            "patch_size": patch_size,
            "max_length": max_length,
            "vocab_size": vocab_size,
            "batch_size": args.batch_size,
            "data_batches": args.data_batches,
            "data_warmup": args.data_warmup,
            "data_threads": 1,
            "model_steps": args.model_steps,
            "model_warmup": args.model_warmup,
            "threads": args.threads,
            "device": str(device),
            "train_size": args.train_size,
            "wds_shuffle_buffer": args.wds_shuffle_buffer,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
        },
        "data": data_rows,
        "model": model_rows,
        "notes": notes,
    }
    if "peer" in model_rows:
        ours_ms, peer_ms = model_rows["ours"]["ms_all"], model_rows["peer"]["ms_all"]
        report["speed_ratio"] = model_rows["peer"]["ms_median"] / model_rows["ours"]["ms_median"]
        report["speed_ratio_paired_median"] = statistics.median(
            p / o for p, o in zip(peer_ms, ours_ms)
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    out.with_suffix(".md").write_text(markdown)
    log(f"wrote {out}.md and {out}.json")
    print(markdown)
    return report


if __name__ == "__main__":
    main()
