"""Benchmark suites and leaderboards: models x tasks through the recipes, resumable, with
FLAVA's Table 4 macro averages (per group: vision, language, multimodal; and overall).

- :mod:`.suite`: the suite format (YAML), checked field by field, and the keys of its cells;
- :mod:`.runner`: pretraining stages and cells through ``flava-zoo fit`` / ``test``, resumed
  by key, records appended to one results file;
- :mod:`.leaderboard`: the aggregation and the Markdown / CSV / PNG renderings;
- :mod:`.report`: the leaderboard files with how they were produced;
- :mod:`.cli`: ``flava-zoo bench run | build``.
"""

from .leaderboard import Average, Leaderboard, Score, aggregate
from .suite import (
    GROUPS,
    ModelSpec,
    PretrainSpec,
    StageSpec,
    Suite,
    TaskSpec,
    cell_key,
    load_suite,
    parse_suite,
)

__all__ = [
    "GROUPS",
    "Average",
    "Leaderboard",
    "ModelSpec",
    "PretrainSpec",
    "Score",
    "StageSpec",
    "Suite",
    "TaskSpec",
    "aggregate",
    "cell_key",
    "load_suite",
    "parse_suite",
]
