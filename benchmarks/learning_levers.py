"""The levers behind the quickstart recipe, one at a time: R@1 per stage-3 step, and step cost.

A plain training loop (the quickstart's modules, data, optimiser groups, schedule and
clipping, without Lightning) so that variants of stage 3 start from the same stage-1/2
export and evaluate zero-shot R@1 on held-out pairs as they go:

    python benchmarks/learning_levers.py curve --name base --save-stages runs/levers/base
    python benchmarks/learning_levers.py curve --name fe2 --init runs/levers/base/text --fused-every 2
    python benchmarks/learning_levers.py cost      # interleaved step times of the variants

Each ``curve`` writes ``benchmarks/results/learning_levers/NAME.json``; the table in
``benchmarks/results/learning_speed.md`` quotes the names of ``flava_zoo.bench.learning.LEVERS``.
The committed records came from this script's prototype (the same loop; option names such as
``mm_lr`` in their ``args``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flava_zoo.reproducibility import reproducible_blas

SHAPES = {"text__num_layers": 2, "multimodal__num_layers": 1}  # flava-tiny-shapes, as overrides of flava-tiny


def curve(a: argparse.Namespace) -> None:
    """Stages 1 and 2 (unless ``--init``), then stage 3 with an evaluation every ``--eval-every`` steps."""
    import lightning as L

    from flava_zoo.data.datamodules import ShapesPretrainData, shapes_tokenizer
    from flava_zoo.data.shapes import ShapesWorld
    from flava_zoo.training.module import FlavaPretrainModule
    from flava_zoo.training.optim import param_groups, warmup_cosine
    from flava_zoo.training.quickstart import evaluate_retrieval

    torch.set_num_threads(a.threads)
    L.seed_everything(a.seed, verbose=False)
    world = ShapesWorld(seed=a.seed)
    tokenizer = shapes_tokenizer(world)
    out = Path(a.out) / f"{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stages_dir = Path(a.save_stages or f"runs/levers/{a.name}")
    tokenizer.save(stages_dir / "tokenizer")
    log = {"args": vars(a), "evals": [], "stage_seconds": {}}

    def train(stage: str, steps: int, lr: float, init: str | None, warmup: int, decay: int | None):
        module = FlavaPretrainModule(model="flava-tiny", model_overrides=json.loads(a.overrides), stage=stage,
                                     init_from=init, freeze=["image"] if stage == "text" else None, lr=lr,
                                     weight_decay=0.05, seed=a.seed)  # fmt: skip
        image = module.model.config.image
        data = ShapesPretrainData(stage=stage, seed=a.seed, image_size=image.image_size, patch_size=image.patch_size,
                                  batch_size=a.batch_size, tokenizer=str(stages_dir / "tokenizer"), mask_seed=a.seed,
                                  captions=1)  # fmt: skip
        groups = param_groups(module.objective, lr, 0.05, {})
        for g in groups:
            g.pop("param_names")
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, a.beta2))
        schedule = warmup_cosine(optimizer, warmup, steps, 0.0, decay)
        params = [p for p in module.parameters() if p.requires_grad]
        batches, seconds = iter(data.train_dataloader()), 0.0
        module.train()
        for step in range(steps):
            began = time.perf_counter()
            batch = next(batches)
            batch.pop("num_skipped", None)
            fused = stage != "multimodal" or step % a.fused_every == 0
            loss = module.objective(batch, fused=fused).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            seconds += time.perf_counter() - began
            if stage == "multimodal" and ((step + 1) % a.eval_every == 0 or step + 1 == steps):
                r = evaluate_retrieval(module.model, tokenizer, world, "test", a.eval_pairs)
                module.train()
                log["evals"].append({"step": step + 1, "train_s": round(seconds, 1),
                                     "i2t": round(r["image_to_text_R@1"], 1), "t2i": round(r["text_to_image_R@1"], 1)})
                out.write_text(json.dumps(log, indent=1))
                print(log["evals"][-1], flush=True)
        log["stage_seconds"][stage] = round(seconds, 1)
        return module

    previous = a.init
    if not previous:
        for stage, steps in (("image", a.image_steps), ("text", a.text_steps)):
            train(stage, steps, a.lr, previous, max(1, steps // 10), None).export(stages_dir / stage)
            previous = str(stages_dir / stage)
    train("multimodal", a.multimodal_steps, a.multimodal_lr, previous, a.warmup, a.decay)
    out.write_text(json.dumps(log, indent=1))


def cost(a: argparse.Namespace) -> None:
    """Median forward + backward time of one stage-3 batch of 64 for flava-tiny and
    flava-tiny-shapes, every term and contrastive only, interleaved round-robin."""
    from flava_zoo.data.datamodules import ShapesPretrainData
    from flava_zoo.training.module import FlavaPretrainModule

    torch.set_num_threads(a.threads)
    data = ShapesPretrainData(stage="multimodal", batch_size=64, captions=1)
    batches = iter(data.train_dataloader())
    batches = [dict(next(batches)) for _ in range(4)]
    for b in batches:
        b.pop("num_skipped")
    models = {name: FlavaPretrainModule(model="flava-tiny", model_overrides=ov, stage="multimodal")
              for name, ov in (("flava-tiny", {}), ("flava-tiny-shapes", SHAPES))}  # fmt: skip
    times: dict[str, list[float]] = {}
    for r in range(a.repeats + 1):
        for name, module in models.items():
            for fused in (True, False):
                began = time.perf_counter()
                module.objective(dict(batches[r % 4]), fused=fused).loss.backward()
                module.zero_grad(set_to_none=True)
                if r:  # the first round warms up
                    times.setdefault(f"{name}, {'every term' if fused else 'contrastive only'}", []).append(
                        time.perf_counter() - began)
    from flava_zoo._provenance import git_state, machine

    base = sorted(times["flava-tiny, every term"])[a.repeats // 2]
    record = {"command": "python benchmarks/learning_levers.py cost " + " ".join(
                  f"--{k} {v}" for k, v in vars(a).items() if k not in ("command", "out")),
              "git": git_state(Path(__file__).parent), "machine": machine(), "batch_size": 64, "median_ms": {},
              "relative": {}}  # fmt: skip
    for key, values in times.items():
        median = sorted(values)[len(values) // 2]
        record["median_ms"][key], record["relative"][key] = round(median * 1000, 1), round(median / base, 3)
        print(f"{key:42s} {median * 1000:7.0f} ms  {median / base:5.2f} x")
    out = Path(a.out) / "cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    """``curve`` or ``cost``; see the module docstring."""
    reproducible_blas()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--name", required=True)
    c.add_argument("--overrides", default="{}", help='config overrides as JSON, e.g. \'{"text__num_layers": 2}\'')
    c.add_argument("--init", default=None, help="start stage 3 from this stage-2 export")
    c.add_argument("--save-stages", default=None)
    c.add_argument("--image-steps", type=int, default=100)
    c.add_argument("--text-steps", type=int, default=100)
    c.add_argument("--multimodal-steps", type=int, default=560)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=2e-3)
    c.add_argument("--multimodal-lr", type=float, default=1e-3)
    c.add_argument("--beta2", type=float, default=0.999)
    c.add_argument("--warmup", type=int, default=28)
    c.add_argument("--decay", type=int, default=0, help="decay steps at the end (0: hold the peak rate)")
    c.add_argument("--fused-every", type=int, default=1)
    c.add_argument("--eval-every", type=int, default=70)
    c.add_argument("--eval-pairs", type=int, default=1000)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="benchmarks/results/learning_levers")
    k = sub.add_parser("cost")
    k.add_argument("--threads", type=int, default=2)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--out", default="benchmarks/results/learning_levers")
    args = parser.parse_args(argv)
    (curve if args.command == "curve" else cost)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
