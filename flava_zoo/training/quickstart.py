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
stage 3's learning rate holds its peak after warm-up and decays only over its last steps:
at a held rate zero-shot R@1 rises steeply after a few hundred steps, and a cosine over the
whole stage spends half of it below half the peak (280 steps of flava-tiny: R@1 6.0 / 5.6
with the hold, 3.4 / 4.4 with the cosine).

Since 0.3 two levers make a step of stage 3 cost 0.46 of what it did (measured one at a
time, ``benchmarks/learning_levers.py``; the table is ``benchmarks/results/learning_speed.md``):
the model is ``flava-tiny-shapes`` (flava-tiny with a 2-layer text tower and a 1-layer
fusion encoder: as much R@1 per step, 0.65 of the step's time), and the fused terms (ITM and
MMM, with the masked tower passes they need) train on every second step, the contrastive
loss on every step (``fused_every=2``: somewhat less per step at 0.69 of the time, about as
much or more per second; on every fourth step it learned clearly less). A higher stage-3 rate (2e-3 with AdamW beta2 0.98 and a
longer warm-up) did not learn faster. Short runs with ``--deterministic true`` are
reproducible (the same arguments and thread count on one machine write the same bytes,
:mod:`flava_zoo.reproducibility`); without it they usually are, not always; two full runs
of the 0.2 recipe drifted apart: equal R@1 at multimodal step 80, not at 120.

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


class RetrievalCurve(L.Callback):
    """Zero-shot R@1 (both directions) on held-out test pairs every ``every`` training steps
    and at the last, against the step and the training seconds so far (the evaluations' own
    time is not counted): how fast a recipe learns, per step and per second."""

    def __init__(self, every: int, tokenizer, world: ShapesWorld, pairs: int, split: str = "test") -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every, self.tokenizer, self.world, self.pairs, self.split = every, tokenizer, world, pairs, split
        self.points: list[dict[str, float]] = []
        self._began = 0.0
        self._evaluating = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        """Start the clock."""
        self._began, self._evaluating = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Evaluate at every ``every``-th step and at the last."""
        step = trainer.global_step
        if step % self.every and step < (trainer.max_steps or 0):
            return
        if self.points and self.points[-1]["step"] == step:
            return
        paused = time.perf_counter()
        metrics = evaluate_retrieval(pl_module.model, self.tokenizer, self.world, self.split, self.pairs)
        pl_module.train()
        self.points.append({
            "step": step,
            "seconds": round(paused - self._began - self._evaluating, 2),
            "image_to_text_R@1": metrics["image_to_text_R@1"],
            "text_to_image_R@1": metrics["text_to_image_R@1"],
        })
        self._evaluating += time.perf_counter() - paused


MODEL = "flava-tiny-shapes"
MULTIMODAL_STEPS = 600
MULTIMODAL_DECAY_STEPS: int | None = 120
MULTIMODAL_WARMUP_STEPS = 30
FUSED_EVERY = 2
LEGACY_ENTRIES = ("metrics.json", "stages")
"""What quickstarts before 0.2 wrote inside the export folder; a rerun removes them there."""


def run_folder(output: str | Path) -> Path:
    """The folder beside the export ``output`` for the run's ``metrics.json`` and ``stages/``:
    ``OUTPUT.run``."""
    output = Path(output)
    if output.name in ("", ".", ".."):
        output = Path(output.absolute().resolve())
    return output.with_name(output.name + ".run")


def _trainer(max_steps: int, progress: bool, deterministic: bool = False, callbacks: list | None = None) -> L.Trainer:
    # a tqdm bar redrawn every 10 steps: rich's bar redraws from a thread of its own, which
    # costs a two-core machine about 8% of its step time
    return L.Trainer(
        callbacks=([TQDMProgressBar(refresh_rate=10)] if progress else []) + list(callbacks or []),
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
        deterministic=deterministic or None,
    )


def run(
    output: str | Path = "quickstart_out",
    seed: int = 0,
    model: str = MODEL,
    image_steps: int = 100,
    text_steps: int = 100,
    multimodal_steps: int = MULTIMODAL_STEPS,
    batch_size: int = 64,
    lr: float = 2e-3,
    multimodal_lr: float = 1e-3,
    multimodal_decay_steps: int | None = MULTIMODAL_DECAY_STEPS,
    multimodal_warmup_steps: int = MULTIMODAL_WARMUP_STEPS,
    fused_every: int = FUSED_EVERY,
    eval_pairs: int = 1000,
    curve_every: int = 0,
    threads: int | None = None,
    deterministic: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the three stages and the evaluation; write the export to ``output`` and
    ``metrics.json`` and the stage exports beside it, to :func:`run_folder` (``OUTPUT.run``).

    The metrics (recall and chance) are in percent; ``metrics["unit"]`` is ``"%"``. BLAS sums
    are made alignment-independent first (:func:`~flava_zoo.reproducibility.reproducible_blas`),
    so short runs with the same arguments and thread count and ``deterministic`` repeat
    exactly (without it they usually do, not always); long ones can still drift (see the
    module docstring). That works only before the process's first
    matrix product; ``metrics["mkl_cbwr"]`` is the environment's setting, not proof MKL
    took it.

    Args:
        output: folder for the export; ``metrics.json`` and the stages go to ``OUTPUT.run`` beside it.
        seed: seed of the world, the initialisation, the data order and the masks.
        model: the architecture trained (a registered size, e.g. ``flava-tiny``).
        image_steps: steps of stage 1 (masked image modelling).
        text_steps: steps of stage 2 (masked language modelling, image tower frozen).
        multimodal_steps: steps of stage 3 (contrastive, ITM, masked multimodal modelling).
        batch_size: samples per step, every stage.
        lr: peak learning rate of stages 1 and 2.
        multimodal_lr: peak learning rate of stage 3.
        multimodal_decay_steps: stage 3 holds its peak rate after warm-up, then decays over
            this many last steps (0 ends on the peak rate; ``null`` or a value >= the stage's
            steps gives a cosine over the whole stage).
        multimodal_warmup_steps: linear warm-up steps of stage 3.
        fused_every: stage 3 trains its fused terms (ITM, MMM: the fusion encoder and the
            masked tower passes) on every ``fused_every``-th step and the contrastive loss on
            every step (1: every term on every step, as FLAVA).
        eval_pairs: held-out test pairs of the zero-shot retrieval evaluation.
        curve_every: also evaluate every this many steps of stage 3 (0: only at the end);
            ``metrics["curve"]`` then lists R@1 against the step and stage 3's training
            seconds (the evaluations' own time left out).
        threads: torch's intra-op threads (default: torch's own choice, the machine's cores).
        deterministic: also make torch use deterministic algorithms only (Lightning's
            ``Trainer(deterministic=True)``); short CPU runs repeat exactly with it (without
            it they usually do, not always), long ones can drift (see the module docstring).
        progress: show progress bars.
    """
    settings = dict(locals())  # the arguments, first thing: the command of the model card
    from ..reproducibility import reproducible_blas

    reproducible_blas()
    start = time.perf_counter()
    output = Path(output)
    check_export_target(output, ignore=LEGACY_ENTRIES)  # before minutes of training, not after
    run_dir = run_folder(output)
    run_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    settings |= {"output": str(output), "threads": torch.get_num_threads()}
    command = ["flava-zoo", "quickstart"]
    for name, value in settings.items():
        if name == "progress":
            continue
        command += [f"--{name}", "null" if value is None else str(value).lower() if isinstance(value, bool) else value]
    stages: list[dict[str, Any]] = []
    L.seed_everything(seed, verbose=False)
    world = ShapesWorld(seed=seed)
    tokenizer = shapes_tokenizer(world)
    tokenizer_dir = run_dir / "stages" / "tokenizer"
    tokenizer.save(tokenizer_dir)
    previous = None
    curve: list[RetrievalCurve] = []
    stage_seconds: dict[str, float] = {}
    for stage, steps in (("image", image_steps), ("text", text_steps), ("multimodal", multimodal_steps)):
        if steps <= 0:
            continue
        print(f"[quickstart] stage {stage}: {steps} steps of batch {batch_size}", flush=True)
        module = FlavaPretrainModule(
            model=model,
            stage=stage,
            init_from=previous,
            freeze=["image"] if stage == "text" else None,
            lr=multimodal_lr if stage == "multimodal" else lr,
            warmup_steps=multimodal_warmup_steps if stage == "multimodal" else max(1, steps // 10),
            fused_every=fused_every if stage == "multimodal" else 1,
            decay_steps=multimodal_decay_steps if stage == "multimodal" else None,
            weight_decay=0.05,
            seed=seed,
        )
        image_cfg = module.model.config.image
        data = ShapesPretrainData(
            stage=stage, seed=seed, image_size=image_cfg.image_size, patch_size=image_cfg.patch_size,
            batch_size=batch_size, tokenizer=str(tokenizer_dir), mask_seed=seed, captions=1,
        )
        curve = [RetrievalCurve(curve_every, tokenizer, world, eval_pairs)] if curve_every and stage == "multimodal" else []
        began = time.perf_counter()
        _trainer(steps, progress, deterministic, curve).fit(module, datamodule=data)
        stage_seconds[stage] = round(time.perf_counter() - began, 2)
        print(f"[quickstart] stage {stage}: {steps} steps in {stage_seconds[stage]:.0f} s", flush=True)
        previous = str(run_dir / "stages" / stage)
        facts = {"stage": stage, "steps": steps, "batch_size": batch_size, "lr": module.hparams.lr,
                 "warmup_steps": module.hparams.warmup_steps, "decay_steps": module.hparams.decay_steps,
                 "freeze": module.hparams.freeze,
                 "fused_every": module.hparams.fused_every if stage == "multimodal" else None}  # fmt: skip
        stages.append({k: v for k, v in facts.items() if v is not None})
        module.export(previous)
    model = module.model

    metrics = evaluate_retrieval(model, tokenizer, world, "test", eval_pairs)
    novel = evaluate_retrieval(model, tokenizer, world, "test_novel", eval_pairs)
    metrics.update({f"novel_{k}": v for k, v in novel.items() if "R@" in k and "chance" not in k})
    metrics["seconds"] = time.perf_counter() - start
    metrics["stage_seconds"] = stage_seconds
    metrics["threads"], metrics["deterministic"] = torch.get_num_threads(), deterministic
    metrics["mkl_cbwr"] = os.environ.get("MKL_CBWR")
    if curve:
        metrics["curve"] = curve[0].points
    metrics = {"unit": PERCENT, **metrics}
    for name in LEGACY_ENTRIES:  # an export holds nothing else: the run's files live beside it
        legacy = output / name
        if legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy)
        elif os.path.lexists(legacy):
            legacy.unlink()
    card = {
        "title": f"{settings['model']} pretrained on the shapes world ({output.name})",
        "description": "FLAVA's three pretraining stages on flava-zoo's built-in shapes world, "
        "written by `flava-zoo quickstart`; evaluated zero-shot on held-out test pairs.",
        "command": shlex.join(str(c) for c in command),
        "stages": stages,
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
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


def _legacy_spelling(argv: list[str]) -> list[str]:
    """``argv`` with the options of quickstarts before 0.3 (``--image-steps 5``,
    ``--no-progress``) in the spelling of :func:`run`'s parameters (``--image_steps 5``,
    ``--progress false``), which every other ``flava-zoo`` command uses."""
    out = []
    for arg in argv:
        if arg == "--no-progress":
            out += ["--progress", "false"]
        elif arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:
            name, eq, value = arg[2:].partition("=")
            out.append("--" + name.replace("-", "_") + eq + value)
        else:
            out.append(arg)
    return out


def build_parser():
    """The ``flava-zoo quickstart`` parser, derived from :func:`run`'s signature and docstring
    (jsonargparse), so an option, its type, default and help exist in one place."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="flava-zoo quickstart", description=__doc__.split("\n\n")[0],
                            default_env=False, exit_on_error=True)
    parser.add_function_arguments(run, as_group=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``flava-zoo quickstart [--output DIR] [--seed N] ...``; every
    parameter of :func:`run` is an option of the same name (``--multimodal_steps 300``; the
    dashed spellings of earlier versions, ``--multimodal-steps``, are accepted too)."""
    import sys

    parser = build_parser()
    args = parser.parse_args(_legacy_spelling(list(sys.argv[1:] if argv is None else argv)))
    run(**vars(args))
    return 0
