"""How fast a pretraining recipe learns: zero-shot R@1 against steps and against seconds.

``benchmarks/learning_speed.py`` runs the quickstart under several recipes (the one of
flava-zoo 0.2 and today's default, by default) one after another in one process, with
:class:`~flava_zoo.training.quickstart.RetrievalCurve` evaluating stage 3 as it goes, and
writes one Markdown table and its JSON. Time on one kind of machine varies about 2x between
hosts, so the table gives both axes: a recipe that learns more per step is better anywhere,
one that learns more per second is better on machines like the one recorded.
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._provenance import describe_machine, git_state, machine

RECIPES: dict[str, dict[str, Any]] = {
    "0.2": {
        "model": "flava-tiny", "image_steps": 100, "text_steps": 100, "multimodal_steps": 280,
        "batch_size": 64, "lr": 2e-3, "multimodal_lr": 1e-3, "multimodal_decay_steps": 60,
        "fused_every": 1,
    },
    "default": {},
}
"""Quickstart arguments of each recipe; ``default`` is :func:`~flava_zoo.training.quickstart.run`'s
own defaults."""


LEVERS: dict[str, str] = {
    "base": "flava-tiny, every term on every step (the 0.2 stage 3)",
    "lr2e3_b98": "flava-tiny, lr 2e-3, AdamW beta2 0.98, warm-up 56",
    "fe2": "flava-tiny, fused terms on every 2nd step",
    "fe4": "flava-tiny, fused terms on every 4th step",
    "t2f1_fe2": "flava-tiny-shapes, fused terms on every 2nd step (the 0.3 stage 3)",
    "t2f1_fe4": "flava-tiny-shapes, fused terms on every 4th step",
}
"""The one-lever-at-a-time runs of ``benchmarks/learning_levers.py`` (file stem -> what changed)."""

COST_KEYS = {
    "base": "flava-tiny, every term", "lr2e3_b98": "flava-tiny, every term",
    "fe2": ("flava-tiny, every term", "flava-tiny, contrastive only", 2),
    "fe4": ("flava-tiny, every term", "flava-tiny, contrastive only", 4),
    "t2f1_fe2": ("flava-tiny-shapes, every term", "flava-tiny-shapes, contrastive only", 2),
    "t2f1_fe4": ("flava-tiny-shapes, every term", "flava-tiny-shapes, contrastive only", 4),
}


def _relative_cost(name: str, relative: dict[str, float]) -> float | None:
    """A lever's mean step cost relative to flava-tiny's full step, from the cost record."""
    key = COST_KEYS.get(name)
    if key is None or not relative:
        return None
    if isinstance(key, str):
        return relative.get(key)
    full, light, every = key
    if full not in relative or light not in relative:
        return None
    return (relative[full] + (every - 1) * relative[light]) / every


def levers_section(levers_dir: str | Path) -> list[str]:
    """Markdown lines for the lever runs in ``levers_dir`` (their JSON records and
    ``cost.json``); empty when there are none."""
    levers_dir = Path(levers_dir)
    runs = {f.stem: json.loads(f.read_text()) for f in sorted(levers_dir.glob("*.json")) if f.stem != "cost"}
    if not runs:
        return []
    cost_file = levers_dir / "cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    steps = sorted({e["step"] for r in runs.values() for e in r["evals"]})
    lines = [
        "", "## The levers, one at a time", "",
        "R@1 image→text / text→image (%, 1,000 test pairs) against stage-3 steps at a **held** "
        "learning rate (no final decay), from `benchmarks/learning_levers.py curve` (a plain loop "
        "of the quickstart's modules, data, optimiser and clipping; its prototype, the same loop, made "
        "these records, each of which keeps its arguments; 1 thread; the flava-tiny rows "
        "start from one shared stage-1/2 export, the flava-tiny-shapes rows from their own). "
        "Step cost: the mean forward + backward time of a stage-3 step relative to flava-tiny's "
        "full step, from `benchmarks/learning_levers.py cost`"
        + (f" ({cost.get('command')}; {describe_machine(cost['machine'])})" if cost.get("machine") else "")
        + ". A blank cell: the run was stopped before that step.",
        "",
        "| lever | step cost | " + " | ".join(str(s) for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for name, run in runs.items():
        at = {e["step"]: f"{e['i2t']:.1f} / {e['t2i']:.1f}" for e in run["evals"]}
        rel = _relative_cost(name, cost.get("relative", {}))
        lines.append(f"| {LEVERS.get(name, name)} | {'' if rel is None else f'{rel:.2f}'} | "
                     + " | ".join(at.get(s, "") for s in steps) + " |")
    return lines


def measure(recipes: list[str], curve_every: int, eval_pairs: int, extra: dict[str, Any] | None = None,
            workdir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run each recipe of ``recipes`` (names of :data:`RECIPES`) through the quickstart with a
    retrieval curve every ``curve_every`` stage-3 steps; ``extra`` overrides arguments of
    every recipe (e.g. fewer steps for a smoke run). Returns the JSON record of the table."""
    from ..training.quickstart import run

    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    record: dict[str, Any] = {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
        "git": git_state(Path(__file__).parent),
        "machine": machine(),
        "eval_pairs": eval_pairs,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in recipes:
            args = {**RECIPES[name], **(extra or {})}
            resolved = {k: v.default for k, v in inspect.signature(run).parameters.items()
                        if k not in ("output", "eval_pairs", "curve_every", "progress")} | args  # fmt: skip
            print(f"[learning-speed] recipe {name}: {args}", flush=True)
            metrics = run(output=Path(tmp) / name, eval_pairs=eval_pairs, curve_every=curve_every,
                          progress=progress, **args)
            record["runs"][name] = {"arguments": args, "resolved": resolved, "metrics": metrics}
    record["machine_after"] = {"load_average": machine().get("load_average")}
    return record


def _first_reaching(curve: list[dict[str, float]], threshold: float) -> dict[str, float] | None:
    for point in curve:
        if min(point["image_to_text_R@1"], point["text_to_image_R@1"]) >= threshold:
            return point
    return None


def write_report(record: dict[str, Any], out: str | Path, threshold: float = 20.0,
                 levers_dir: str | Path | None = None) -> Path:
    """Write ``OUT.md`` (the curve per recipe, the final evaluation, the first step and second
    reaching ``threshold`` % both ways, and the lever runs of ``levers_dir`` when given) and
    ``OUT.json``; return the Markdown path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(record, indent=1))
    git = record.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    lines = [
        "# Learning speed of the quickstart recipes",
        "",
        f"Zero-shot R@1 (%) on {record['eval_pairs']} held-out shapes-world test pairs (chance "
        f"{100 / record['eval_pairs']:.1f} %), during stage 3 (every point: the step and stage 3's "
        "training seconds so far, evaluations not counted) and after the run (with the final "
        "learning-rate decay).",
        "",
        f"- Command: `{record.get('command')}`",
        f"- Commit: {commit}",
        f"- Machine: {describe_machine(record['machine'])}; load average "
        f"{record['machine'].get('load_average')} before, "
        f"{(record.get('machine_after') or {}).get('load_average')} after",
        "",
        "| recipe | arguments | threads | deterministic | stage seconds (image / text / multimodal) | "
        "whole run s | final R@1 i→t / t→i | first point ≥ "
        f"{threshold:g} % both ways |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in record["runs"].items():
        m = run["metrics"]
        stages = m.get("stage_seconds", {})
        first = _first_reaching(m.get("curve", []), threshold)
        reach = f"step {first['step']}, {first['seconds']:.0f} s" if first else "not reached"
        args = ", ".join(f"{k}={v}" for k, v in run["arguments"].items()) or "(run()'s defaults)"
        lines.append(
            f"| {name} | {args} | {m.get('threads')} | {m.get('deterministic')} | "
            + " / ".join(f"{stages.get(s, 0):.0f}" for s in ("image", "text", "multimodal"))
            + f" | {m['seconds']:.0f} | {m['image_to_text_R@1']:.1f} / {m['text_to_image_R@1']:.1f} | {reach} |"
        )
    lines += ["", "Whole run: from the start of the quickstart to its table, including the curve's "
              "evaluations (stage 3's seconds minus its last point's seconds); a quickstart without "
              "`--curve_every` takes that much less."]
    for name, run in record["runs"].items():
        if run.get("resolved"):
            lines += ["", f"Recipe {name} in full: " + ", ".join(f"{k}={v}" for k, v in run["resolved"].items())]
    for name, run in record["runs"].items():
        lines += ["", f"## Recipe {name}: R@1 during stage 3", "",
                  "| step | seconds | R@1 image→text | R@1 text→image |", "|---|---|---|---|"]
        for p in run["metrics"].get("curve", []):
            lines.append(f"| {p['step']} | {p['seconds']:.0f} | {p['image_to_text_R@1']:.1f} | {p['text_to_image_R@1']:.1f} |")
    if levers_dir is not None:
        lines += levers_section(levers_dir)
    md = Path(str(out) + ".md")
    md.write_text("\n".join(lines) + "\n")
    return md
