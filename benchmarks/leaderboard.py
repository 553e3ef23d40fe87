"""Benchmark leaderboards: run a suite of models x tasks and build FLAVA's Table 4 from it.

    python benchmarks/leaderboard.py run shapes --jobs 2
    python benchmarks/leaderboard.py build shapes

The same as ``flava-zoo bench``; see :mod:`flava_zoo.bench`.
"""

import sys

from flava_zoo.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/leaderboard.py"))
