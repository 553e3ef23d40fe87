"""``flava-zoo probe``: ``list``, ``NAME --model M [options]``, ``report``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import PROBES, probe_module
from .common import RESULTS_FILE, ProbeContext, ProbeError, ProbeWriter, load_classifier

__all__ = ["build_parser", "main", "run_parsed"]


def build_parser(name: str) -> argparse.ArgumentParser:
    """The options of probe ``name``: the common ones, then the probe's own."""
    module = probe_module(name)
    parser = argparse.ArgumentParser(
        prog=f"flava-zoo probe {name}",
        description=(module.__doc__ or PROBES[name]).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="registered name (random weights), zoo tag, export folder or .ckpt")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the model's own)")
    parser.add_argument("--classifier", default=None, help="a fine-tuning checkpoint, for the probes that query a task's classifier")
    parser.add_argument("--n", type=int, default=None, help="test items (default: the probe's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's random choices, its bootstrap and a random init")
    parser.add_argument("--world-seed", dest="world_seed", type=int, default=0, help="the shapes world's seed (the model's training world: 0 for the quickstart)")
    parser.add_argument("--out", default="probes", help="folder for results.jsonl, figures.jsonl and figures/ (default: probes)")
    parser.add_argument("--results", default=None, help=f"results file (default: OUT/{RESULTS_FILE})")
    parser.add_argument("--label", default=None, help="the model's name in the records (default: --model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add = getattr(module, "add_arguments", None)
    if add is not None:
        add(parser)
    return parser


def _context(args: argparse.Namespace) -> ProbeContext:
    import torch

    from ..data.shapes import ShapesWorld
    from ..inference import InferenceError, load_inference_model

    torch.manual_seed(int(args.seed))  # a registered name is a random init: make it this seed's
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an architecture name.*")
        try:
            model = load_inference_model(args.model, device=args.device, tokenizer=args.tokenizer)
        except (InferenceError, FileNotFoundError, ValueError) as e:
            missing = "" if Path(str(args.model)).exists() or "/" not in str(args.model) else " (no such folder or file)"
            raise ProbeError(f"--model {args.model}{missing}: {e}") from None
    classifier = load_classifier(args.classifier, args.device) if args.classifier else None
    world = ShapesWorld(seed=int(args.world_seed), image_size=model.model.config.image.image_size)
    out = Path(args.out)
    results = Path(args.results) if args.results else out / RESULTS_FILE
    source = model.source
    lineage: dict[str, Any] = {"pretrained": source.origin if source is not None else str(args.model)}
    if source is not None and not source.pretrained:
        lineage["random_init_seed"] = int(args.seed)
    if classifier is not None:
        lineage["classifier"] = str(Path(args.classifier).resolve())
        if classifier.task:
            lineage["classifier_task"] = classifier.task
    writer = ProbeWriter(
        results=results,
        figures_dir=out / "figures",
        model=args.label or str(args.model),
        model_source=lineage["pretrained"],
        lineage=lineage,
        config={k: v for k, v in vars(args).items() if k not in ("quiet", "out", "results", "device")},
    )
    return ProbeContext(
        model=model,
        world=world,
        writer=writer,
        classifier=classifier,
        n=args.n,
        seed=int(args.seed),
        batch_size=int(args.batch_size),
        quiet=bool(args.quiet),
    )


def run_parsed(name: str, args: argparse.Namespace) -> list[Any]:
    """Run probe ``name`` with parsed options; returns its records."""
    ctx = _context(args)
    return probe_module(name).run(ctx, args)


def _number(value: float, unit: str) -> str:
    """A value as the tables show it: one decimal in percent, else three significant digits."""
    return f"{value:.1f}" if unit == "%" else f"{value:.3g}"


def _print_records(records: Sequence[Any]) -> None:
    """The records as a table on stdout: model (when more than one), split, metric, value,
    its 95% interval, chance and unit, in the interval's own precision."""
    chance = {
        (r.model, r.task, r.split, r.metric[len("chance/") :]): r.value for r in records if r.metric.startswith("chance/")
    }
    rows = [r for r in records if not r.metric.startswith("chance/")]
    if not rows:
        return
    many = len({r.model for r in rows}) > 1
    model_w = max(len(r.model) for r in rows) if many else 0
    split_w = max(5, max(len(r.split) for r in rows))
    width = max(len(r.metric) for r in rows)
    head = f"{'model':<{model_w}} " if many else ""
    print(f"{head}{'split':<{split_w}} {'metric':<{width}} {'value':>9} {'95% interval':>20} {'chance':>8}  unit")
    for r in rows:
        iv = r.interval
        span = f"[{_number(iv['low'], r.unit)}, {_number(iv['high'], r.unit)}]" if iv else ""
        c = chance.get((r.model, r.task, r.split, r.metric))
        model = f"{r.model:<{model_w}} " if many else ""
        print(
            f"{model}{r.split:<{split_w}} {r.metric:<{width}} {_number(r.value, r.unit):>9} {span:>20} "
            f"{'' if c is None else _number(c, r.unit):>8}  {r.unit}"
        )


def _usage() -> str:
    lines = ["usage: flava-zoo probe NAME --model M [options]   (flava-zoo probe NAME --help)", "", "probes:"]
    lines += [f"  {name:<15}{summary}" for name, summary in PROBES.items()]
    lines += [
        "",
        "  list           the probes, one a line",
        "  report         flava-zoo probe report --results DIR_OR_FILE [...] --out DIR: one HTML page",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flava-zoo probe``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "list":
        for probe in PROBES:
            print(probe)
        return 0
    if name == "report":
        from .report import main as report_main

        return report_main(rest)
    if name not in PROBES:
        print(f"flava-zoo probe: unknown probe {name!r}; probes: {', '.join(PROBES)}", file=sys.stderr)
        return 2
    args = build_parser(name).parse_args(rest)
    try:
        records = run_parsed(name, args)
    except ProbeError as e:
        print(f"flava-zoo probe {name}: {e}", file=sys.stderr)
        return 1
    _print_records(records)
    results = Path(args.results) if args.results else Path(args.out) / RESULTS_FILE
    print(f"{len(records)} records appended to {results}", file=sys.stderr)
    return 0
