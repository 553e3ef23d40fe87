"""Shapes-world downstream benchmark: a pretrained model against a randomly initialised flava-tiny.

Runs the shipped shapes recipes (``recipes/probe``, ``recipes/finetune``, ``recipes/zeroshot``)
through ``flava_zoo.cli.main`` on (a) a pretrained export folder (``flava-zoo quickstart``'s
output) and (b) a randomly initialised ``flava-tiny``, with the same steps, data sizes and
seeds, reads the metrics back from the results file, and writes a Markdown table with both
columns, the chance level, the command, the commit and the machine.

    python benchmarks/downstream_shapes.py --pretrained quickstart_out \\
        --out benchmarks/results/downstream_shapes.md

Fine-tuning follows each recipe's own schedule (its ``max_steps`` and ``warmup_steps``) unless
``--steps`` / ``--warmup`` set one for all; about 25 minutes on two CPU cores (one column per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

# (row label, recipe, kind, metric, chance-level key)
ROWS = [
    (
        "Linear probe, shape (top-1)",
        "probe/shapes_classification.yaml",
        "test",
        "accuracy",
        "uniform6",
    ),
    (
        "Zero-shot classification, shape (top-1)",
        "zeroshot/shapes_classification.yaml",
        "test",
        "accuracy",
        "uniform6",
    ),
    (
        "Zero-shot retrieval, image->text R@1",
        "zeroshot/shapes_retrieval.yaml",
        "test",
        "image_to_text_R@1",
        "i2t",
    ),
    (
        "Zero-shot retrieval, text->image R@1",
        "zeroshot/shapes_retrieval.yaml",
        "test",
        "text_to_image_R@1",
        "t2i",
    ),
    ("VQA (VQA accuracy)", "finetune/shapes_vqa.yaml", "fit", "vqa_accuracy", "vqa_majority"),
    (
        "Visual entailment (accuracy)",
        "finetune/shapes_visual_entailment.yaml",
        "fit",
        "accuracy",
        "uniform3",
    ),
    ("Memes-like (AUROC)", "finetune/shapes_memes.yaml", "fit", "auroc", "half"),
    ("Memes-like (accuracy)", "finetune/shapes_memes.yaml", "fit", "accuracy", "half"),
    (
        "Caption entailment, text only (accuracy)",
        "finetune/shapes_caption_entailment.yaml",
        "fit",
        "accuracy",
        "uniform3",
    ),
]


def log(message: str) -> None:
    print(f"[downstream_shapes] {message}", file=sys.stderr, flush=True)


def run_recipe(
    recipe: str, kind: str, model: str, out: Path, results: Path, args: argparse.Namespace
) -> None:
    """Run one recipe (fit + test, or test only) on ``model``; metrics land in ``results``."""
    from flava_zoo.cli import main

    path = RECIPES / recipe
    common = [
        "--config", str(path), f"--model.init_args.model={model}", f"--model.init_args.results={results}",
        f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--data.init_args.test_size={args.test_size}",
        f"--data.init_args.seed={args.seed}", f"--seed_everything={args.seed}",
    ]  # fmt: skip
    if kind == "test":
        if recipe.startswith("probe"):
            common += [f"--data.init_args.train_size={args.probe_train}", f"--data.init_args.val_size={args.probe_val}",
                       f"--model.init_args.cache_dir={out / 'feature_cache'}"]  # fmt: skip
        if "retrieval" in recipe:
            common[common.index(f"--data.init_args.test_size={args.test_size}")] = (
                f"--data.init_args.test_size={args.retrieval_images}"
            )
        main(["test", *common])
        return
    steps, warmup = schedule(recipe, args)
    fit = common + [
        f"--trainer.max_steps={steps}", f"--data.init_args.batch_size={args.batch_size}",
        f"--data.init_args.train_size={steps * args.batch_size}", "--data.init_args.val_size=64",
        f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=2",
        f"--model.init_args.warmup_steps={warmup}", "--trainer.logger=false",
        f"--trainer.callbacks.init_args.dirpath={out / 'checkpoints'}",
        f"--trainer.callbacks.init_args.every_n_train_steps={steps}",
    ]  # fmt: skip
    main(["fit", *fit])
    main(["test", *fit, "--ckpt_path", "last"])


def schedule(recipe: str, args: argparse.Namespace) -> tuple[int, int]:
    """Fine-tuning steps and warm-up steps of ``recipe``: ``--steps`` / ``--warmup`` when
    given, else the recipe's own ``trainer.max_steps`` and ``warmup_steps``."""
    import yaml

    config = yaml.safe_load((RECIPES / recipe).read_text())
    steps = args.steps if args.steps is not None else int(config["trainer"]["max_steps"])
    warmup = args.warmup if args.warmup is not None else int(config["model"]["init_args"]["warmup_steps"])
    return steps, warmup


def columns(pretrained: list[str], baseline: str) -> dict[str, str]:
    """Column name -> model: each ``[LABEL=]DIR`` of ``pretrained`` (label: the folder's name),
    then ``random`` (the randomly initialised ``baseline``)."""
    out: dict[str, str] = {}
    for item in pretrained:
        label, sep, folder = item.partition("=")
        if not sep:
            label, folder = Path(item).name, item
        if not Path(folder).is_dir():
            raise SystemExit(f"--pretrained {item}: {folder} is not an exported folder")
        if label in out or label == "random":
            raise SystemExit(f"--pretrained: column label {label!r} is used twice (or is 'random')")
        out[label] = str(Path(folder).resolve())
    out["random"] = baseline
    return out


def run_column(
    column: str, model: str, recipes: list[str], work: Path, args: argparse.Namespace
) -> dict[str, float]:
    """Run every recipe on one model; returns the seconds each took. Each recipe writes its
    own results file (:func:`results_path`): two recipes may record the same task and metric
    (the linear probe and zero-shot classification both score ``shapes/image_classification``
    accuracy)."""
    timings_file = work / column / "timings.json"
    previous = json.loads(timings_file.read_text()) if args.resume and timings_file.is_file() else {}
    timings = {}
    for recipe in recipes:
        kind = next(r[2] for r in ROWS if r[1] == recipe)
        results = results_path(work, column, recipe)
        key = f"{column}:{recipe}"
        if args.resume and results.is_file() and key in previous:
            log(f"{column}: {recipe} kept from the earlier run (--resume)")
            timings[key] = previous[key]
            continue
        log(f"{column}: {recipe} ({kind})")
        results.unlink(missing_ok=True)
        t = time.perf_counter()
        run_recipe(recipe, kind, model, results.parent, results, args)
        timings[key] = time.perf_counter() - t
        timings_file.parent.mkdir(parents=True, exist_ok=True)
        timings_file.write_text(json.dumps({**previous, **timings}, indent=2))
    return timings


def results_path(work: Path, column: str, recipe: str) -> Path:
    """The results file of one recipe run on one column's model."""
    return work / column / Path(recipe).with_suffix("") / "results.jsonl"


def chance_levels(args: argparse.Namespace) -> dict[str, float]:
    """Chance levels: uniform guessing, or the majority answer for VQA (train majority on test)."""
    from flava_zoo.data.shapes import ShapesVQA, ShapesWorld

    world = ShapesWorld(seed=args.seed, sizes={"train": 5000, "test": args.test_size})
    train = Counter(ShapesVQA(world, "train").annotation(i)["answer"] for i in range(5000))
    majority = train.most_common(1)[0][0]
    test = [ShapesVQA(world, "test").annotation(i)["answer"] for i in range(args.test_size)]
    n = args.retrieval_images
    return {
        "uniform6": 100 / 6,
        "uniform3": 100 / 3,
        "half": 50.0,
        "vqa_majority": 100 * sum(a == majority for a in test) / len(test),
        "i2t": 100 * 5 / (5 * n),  # any of an image's 5 captions ranked first among 5n
        "t2i": 100 / n,
    }


def read_metrics(results: Path) -> dict[tuple[str, str], float]:
    """``{(task, metric): value}`` in percent from a results file (the latest record wins;
    old records without a unit are converted by ``read_results``'s rule)."""
    from flava_zoo.evaluation.results import PERCENT, read_results

    out = {}
    for r in read_results(results):
        if r.unit != PERCENT:
            raise SystemExit(f"{results}: {r.task} {r.metric} is recorded in {r.unit!r}, not percent")
        out[(r.task, r.metric)] = r.value
    return out


TASK_OF = {
    "probe/shapes_classification.yaml": "shapes/image_classification",
    "zeroshot/shapes_classification.yaml": "shapes/image_classification",
    "zeroshot/shapes_retrieval.yaml": "shapes/retrieval",
    "finetune/shapes_vqa.yaml": "shapes/vqa",
    "finetune/shapes_visual_entailment.yaml": "shapes/visual_entailment",
    "finetune/shapes_memes.yaml": "shapes/memes",
    "finetune/shapes_caption_entailment.yaml": "shapes/text_classification",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with "
            f"{torch.get_num_threads()} intra-op thread(s), Python {platform.python_version()}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pretrained", required=True, nargs="+", metavar="[LABEL=]DIR",
        help="exported folder(s) of pretrained models, each a column (label: the folder's name)",
    )
    parser.add_argument(
        "--baseline", default="flava-tiny", help="the randomly initialised architecture"
    )
    parser.add_argument("--out", default="benchmarks/results/downstream_shapes.md")
    parser.add_argument(
        "--work", default="runs/downstream_shapes", help="run folders and results files"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="fine-tuning steps per task (default: each recipe's max_steps)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps (default: each recipe's warmup_steps)"
    )
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--probe-train", type=int, default=2000)
    parser.add_argument("--probe-val", type=int, default=500)
    parser.add_argument("--retrieval-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--only", nargs="*", help="run only these recipes (e.g. finetune/shapes_vqa.yaml)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="columns run in parallel processes")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep each (column, recipe) whose results file an earlier run in --work finished",
    )
    parser.add_argument("--column", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    models = columns(args.pretrained, args.baseline)
    recipes = list(dict.fromkeys(r[1] for r in ROWS if not args.only or r[1] in args.only))
    start = time.perf_counter()
    if args.column:
        timings = run_column(args.column, models[args.column], recipes, work, args)
        return {"timings": timings}
    if args.jobs > 1:
        codes, running = [], []
        for c in models:  # at most --jobs columns at a time
            if len(running) == args.jobs:
                codes.append(running.pop(0).wait())
            running.append(subprocess.Popen([sys.executable, __file__, *argv, "--column", c]))
        codes += [proc.wait() for proc in running]
        if any(codes):
            raise SystemExit(f"a benchmark column failed (exit codes {codes})")
        timings = {}
        for c in models:
            timings.update(json.loads((work / c / "timings.json").read_text()))
    else:
        timings = {}
        for column, model in models.items():
            timings.update(run_column(column, model, recipes, work, args))
    total = time.perf_counter() - start
    metrics = {c: {r: read_metrics(results_path(work, c, r)) for r in recipes} for c in models}
    chance = chance_levels(args)

    names = list(models)
    table = [
        "| task (metric, %) | " + " | ".join(f"{n}" if n != "random" else "random init" for n in names) + " | chance |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    rows = []
    for label, recipe, _, metric, chance_key in ROWS:
        if recipe not in recipes:
            continue
        task = TASK_OF[recipe]
        values = [metrics[c][recipe].get((task, metric)) for c in models]  # percent
        cells = [f"{v:.1f}" if v is not None else "n/a" for v in values]
        table.append(f"| {label} | " + " | ".join(cells) + f" | {chance[chance_key]:.1f} |")
        rows.append({"task": label, "recipe": recipe, "metric": metric,
                     **dict(zip(names, values)), "chance_percent": chance[chance_key]})  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = Path(args.out)
    own = {str(p.resolve().relative_to(ROOT)) for p in (out, out.with_suffix(".json")) if p.resolve().is_relative_to(ROOT)}
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    dirty = [line for line in status if line[3:].strip() not in own]  # this table's own files do not count
    command = "python benchmarks/downstream_shapes.py " + " ".join(shlex.quote(a) for a in argv)
    report = [
        "# Shapes-world downstream tasks: pretrained vs random init",
        "",
        "Columns: " + "; ".join(f"{n}: `{m}`" for n, m in models.items() if n != "random")
        + f"; random init: `{args.baseline}`. Same recipes, steps, data and seeds for every column.",
        "",
        *table,
        "",
        "- Fine-tuning (steps of batch "
        f"{args.batch_size}, warm-up steps): "
        + "; ".join(f"{Path(r).stem} {steps} ({warmup})" for r in recipes if r.startswith("finetune")
                    for steps, warmup in [schedule(r, args)])
        + f"; the recipes' learning rates and layer decay; tests on {args.test_size} held-out test scenes.",
        f"- Linear probe: {args.probe_train} train / {args.probe_val} val / {args.test_size} test images, "
        "L2 chosen on val, refitted on train + val.",
        f"- Zero-shot retrieval: {args.retrieval_images} test images x 5 captions.",
        "- Chance: uniform guessing over the classes (6 shapes, 3 entailment labels, 2 meme labels); VQA: "
        "always the training split's most frequent answer; retrieval: one hit among all candidates.",
        f"- Command: `{command}`",
        f"- Commit: `{commit}`{' (with uncommitted changes)' if dirty else ''}",
        f"- Machine: {machine()}",
        f"- Wall time: {total / 60:.1f} min ({args.jobs} column(s) in parallel, {args.threads} thread(s) each)"
        + (f"; this invocation only: --resume kept earlier runs (all runs: {sum(timings.values()) / 60:.1f} "
           "process-minutes, per recipe in the JSON)" if args.resume else ""),
    ]
    text = "\n".join(report) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "timings_s": timings, "args": vars(args)}, indent=2)
    )
    print(text)
    return {"rows": rows, "timings": timings}


if __name__ == "__main__":
    main()
