"""The GPU variant of the shapes leaderboard: the same models (design axes), tasks and seeds as
``benchmarks/suites/shapes.yaml``, with a larger budget, run as parallel jobs on one GPU.

The suite is derived from the CPU one, not copied, so the two cannot drift apart: every
pretraining stage runs ``--steps-scale`` times its steps (default 2: 200 / 200 / 1,400) at
``--batch-size`` (default 128), every fine-tuning cell ``--steps-scale`` times its steps; the
results, leaderboard and work folder get the suffix ``_gpu``. It resumes like every suite, so a
run stopped by its time limit (``--limit-s``, default 470 s: 8 minutes less the start) goes on
where it stopped when started again, and the table is built from whatever has finished.

    python benchmarks/gpu_leaderboard.py           # on a CUDA machine: 8 jobs share the GPU
    python benchmarks/gpu_leaderboard.py --smoke   # the derived suite, one 2-step cell (any machine)

Writes ``benchmarks/results/leaderboard_shapes_gpu.{md,csv,png}`` and its results files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CPU_SUITE = ROOT / "benchmarks" / "suites" / "shapes.yaml"
STEPS = re.compile(r"^--trainer\.max_steps=(\d+)$")


def derive(raw: dict[str, Any], steps_scale: float, batch_size: int, suffix: str = "_gpu") -> dict[str, Any]:
    """The GPU suite from the CPU suite's loaded YAML (anchors already expanded)."""
    out = json.loads(json.dumps(raw))  # YAML anchors alias one object; deepcopy would keep them aliased
    out["name"] = raw["name"] + suffix
    for field in ("results", "leaderboard", "work_dir"):
        path = Path(raw[field])
        stem = path.stem if field == "results" else path.name
        out[field] = str(path.with_name(stem + suffix + path.suffix)) if field == "results" else str(path.with_name(stem + suffix))
    out["description"] = (raw.get("description", "") + f" GPU variant: {steps_scale:g}x the steps, pretraining batch "
                          f"{batch_size} (benchmarks/gpu_leaderboard.py).")  # fmt: skip
    for model in out["models"]:
        pretrain = model.get("pretrain")
        if pretrain is None:
            continue
        pretrain["steps"] = {k: max(1, round(v * steps_scale)) for k, v in pretrain["steps"].items()}
        pretrain["batch_size"] = batch_size
        args = pretrain.get("args", {})
        stages = args.values() if isinstance(args, dict) else [args]
        for stage_args in stages:
            for i, arg in enumerate(stage_args):  # the decay follows the steps
                match = re.match(r"^--model\.init_args\.decay_steps=(\d+)$", arg)
                if match:
                    stage_args[i] = f"--model.init_args.decay_steps={max(1, round(int(match[1]) * steps_scale))}"
    for task in out["tasks"]:
        overrides = task.get("overrides") or []
        for i, arg in enumerate(overrides):
            match = STEPS.match(arg)
            if match:
                overrides[i] = f"--trainer.max_steps={max(1, round(int(match[1]) * steps_scale))}"
    return out


def smoke(derived: dict[str, Any]) -> dict[str, Any]:
    """One model (``random_init``), one seed, the language task at 2 steps, in ``runs/bench/smoke``."""
    out = dict(derived)
    out["models"] = [m for m in derived["models"] if m["name"] == "random_init"]
    task = dict(next(t for t in derived["tasks"] if t["name"] == "caption_entailment"))
    task["overrides"] = [*task.get("overrides", []), "--trainer.max_steps=2", "--data.init_args.train_size=64",
                         "--data.init_args.test_size=32"]  # fmt: skip
    out["tasks"] = [task]
    out["seeds"] = [0]
    out.pop("baseline", None)
    out.pop("contrasts", None)
    for field in ("results", "leaderboard", "work_dir"):
        out[field] = str(Path("runs") / "bench" / "smoke" / Path(derived[field]).name)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the derived suite and run it (``flava-zoo bench run``) within ``--limit-s``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-scale", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=8, help="parallel jobs on the one GPU (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the suite's)")
    parser.add_argument("--models", default=None)
    parser.add_argument("--limit-s", type=float, default=470.0, help="stop (resumable) after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="one model, one seed, the first task, 2 steps (CPU check)")
    parser.add_argument("--suite-out", default=str(ROOT / "runs" / "bench" / "shapes_gpu.yaml"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the suite's relative results and work folders are the repository's

    raw = yaml.safe_load(CPU_SUITE.read_text(encoding="utf-8"))
    derived = derive(raw, args.steps_scale, args.batch_size)
    run = ["run"]  # the recipes' accelerator is ``auto``: the GPU where there is one
    if args.smoke:
        derived = smoke(derived)
    suite = Path(args.suite_out)
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(yaml.safe_dump(derived, sort_keys=False), encoding="utf-8")
    print(f"gpu_leaderboard: wrote {suite} ({len(derived['models'])} models x {len(derived['tasks'])} tasks)", flush=True)
    run += [str(suite), "--jobs", str(args.jobs if not args.smoke else 1), "--threads", str(args.threads)]
    if args.seeds:
        run += ["--seeds", args.seeds]
    if args.models:
        run += ["--models", args.models]

    from flava_zoo.bench.cli import main as bench_main

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt("time limit")

    if args.limit_s > 0 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, stop)
        signal.alarm(int(args.limit_s))
    try:
        code = bench_main(run)
    except KeyboardInterrupt:
        print("gpu_leaderboard: time limit reached; run it again to resume; building the table of what finished")
        code = bench_main(["build", str(suite)])
    finally:
        signal.alarm(0)
    return code


if __name__ == "__main__":
    sys.exit(main())
