"""``flava-zoo bench``: run a benchmark suite (``run``) and build its leaderboard (``build``).

    flava-zoo bench run shapes --jobs 2          # resumes; builds the leaderboard at the end
    flava-zoo bench run shapes --dry-run         # what would run, with the exact commands
    flava-zoo bench build shapes                 # Markdown + CSV + PNG from the records
    flava-zoo bench run path/to/suite.yaml --models merged --tasks vqa
    flava-zoo bench run downstream_shapes --source quickstart=runs/qs6   # another export in that column
    flava-zoo bench run shapes --seeds 0 --jobs 2 # one seed of a seeded suite now, the others later

A seeded suite (``seeds: [0, 1, 2]``) runs every model once per seed; runs resume by default,
so the table may be assembled from several runs (each record keeps its commit).

A suite is a shipped name (``benchmarks/suites/<name>.yaml``) or a YAML file; see
:mod:`flava_zoo.bench.suite` for the format.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from .suite import NAME_PATTERN, ModelSpec, Suite, find_suite, load_suite

__all__ = ["main"]


def _suite(args: argparse.Namespace) -> Suite:
    suite = load_suite(find_suite(args.suite), data_root=args.data_root)
    changes = {}
    if args.results:
        changes["results"] = Path(args.results)
    if getattr(args, "work_dir", None):
        changes["work_dir"] = Path(args.work_dir)
    if args.out:
        changes["leaderboard"] = Path(args.out)
    if args.source:
        changes["models"] = _with_sources(suite, args.source)
    if changes:
        suite = dataclasses.replace(suite, **changes)
    seeds = _names(args.seeds)
    try:
        picked = [int(s) for s in seeds] if seeds else None
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    return suite.select(_names(args.models), _names(args.tasks), picked)


def _with_sources(suite: Suite, given: list[str]) -> tuple[ModelSpec, ...]:
    """The suite's models with ``NAME=SOURCE`` applied: the model NAME takes its weights from
    SOURCE (a registered architecture, a zoo ``arch.tag`` or an exported folder, required to
    exist when it is a folder), or a model NAME is added."""
    models = list(suite.models)
    for item in given:
        name, sep, source = item.partition("=")
        if not sep or not NAME_PATTERN.match(name) or not source:
            raise ValueError(f"--source {item!r}: expected NAME=SOURCE (a model name of letters, digits and _.+-; "
                             "an architecture, a zoo arch.tag or a folder)")  # fmt: skip
        requires = (Path(source),) if Path(source).is_dir() else ()
        spec = ModelSpec(name, f"weights from {source} (--source)", source=source, requires=requires)
        names = [m.name for m in models]
        if name in names:
            models[names.index(name)] = spec
        else:
            models.append(spec)
    return tuple(models)


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("suite", help="a shipped suite name (shapes, flava-paper) or a suite YAML file")
        p.add_argument("--results", help="results file (JSON lines); default: the suite's")
        p.add_argument("--out", help="leaderboard path without extension; default: the suite's")
        p.add_argument("--models", help="comma-separated model names (default: all)")
        p.add_argument("--tasks", help="comma-separated task names (default: all)")
        p.add_argument("--seeds", help="comma-separated seeds among the suite's (default: all of them)")
        p.add_argument("--source", action="append", default=[], metavar="NAME=SOURCE",
                       help="model NAME's weights from SOURCE (an export folder, architecture or zoo tag); "
                            "adds the model when the suite has none of that name; repeatable")  # fmt: skip
        p.add_argument("--data-root", help="replaces {data_root} in the suite (default: its data_root, else data)")
        p.add_argument("--partial", action="store_true", help="average over the tasks present when some are missing")
        p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")

    run = sub.add_parser("run", help="run the missing cells, then build the leaderboard")
    common(run)
    run.add_argument("--jobs", type=int, default=1, help="worker processes (default 1: in this process)")
    run.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    run.add_argument("--work-dir", help="exports, checkpoints and cell folders; default: the suite's")
    run.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run nothing")
    run.add_argument("--no-build", action="store_true", help="do not build the leaderboard afterwards")
    run.add_argument("--verbose", action="store_true", help="show the jobs' output instead of writing log.txt")
    build = sub.add_parser("build", help="build the leaderboard from the results file")
    common(build)
    return parser


def main(argv: list[str] | None = None, prog: str = "flava-zoo bench") -> int:
    """Entry point; returns 0 when every job ran (or nothing was left), 1 when some failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    if args.action == "run" and args.jobs < 1:
        print(f"{prog}: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        suite = _suite(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    command = " ".join([prog, *map(shlex.quote, argv)])
    code = 0
    if args.action == "run":
        from .runner import run_suite, terminated

        try:
            summary = run_suite(suite, jobs=args.jobs, threads=args.threads, verbose=args.verbose,
                                dry_run=args.dry_run, command=command)  # fmt: skip
        except KeyboardInterrupt:  # the runner said what was kept; no traceback
            return 143 if terminated() else 130
        code = 0 if summary.ok else 1
        if args.dry_run or args.no_build:
            return code
    from .report import build

    output = build(suite, partial=args.partial, chart=not args.no_chart, command=command if args.action == "build" else "")
    print(output.markdown)
    print("[bench] wrote " + ", ".join(str(p) for p in output.paths.values()))
    return code


if __name__ == "__main__":
    sys.exit(main())
