"""Zero-shot R@1 against steps and seconds for the quickstart recipes, one after another.

    python benchmarks/learning_speed.py --out benchmarks/results/learning_speed

writes ``learning_speed.md`` and ``learning_speed.json`` (see flava_zoo/bench/learning.py).
``--smoke`` runs a few steps of each recipe, to test the script.
"""

from __future__ import annotations

import argparse

from flava_zoo.bench.learning import RECIPES, measure, write_report
from flava_zoo.reproducibility import reproducible_blas


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, write the table."""
    reproducible_blas()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--curve-every", type=int, default=40, help="stage-3 steps between evaluations")
    parser.add_argument("--eval-pairs", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=20.0, help="R@1 (%%) whose first step and second the table names")
    parser.add_argument("--out", default="benchmarks/results/learning_speed", help="path without suffix")
    parser.add_argument("--levers", default="benchmarks/results/learning_levers",
                        help="folder of benchmarks/learning_levers.py records to tabulate too")
    parser.add_argument("--smoke", action="store_true", help="3 steps per stage, 40 pairs: test the script")
    args = parser.parse_args(argv)
    extra = {"image_steps": 3, "text_steps": 3, "multimodal_steps": 4, "batch_size": 8} if args.smoke else None
    pairs = 40 if args.smoke else args.eval_pairs
    record = measure(args.recipes, 2 if args.smoke else args.curve_every, pairs, extra)
    print(write_report(record, args.out, args.threshold, args.levers).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
