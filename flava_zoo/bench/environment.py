"""What produced a leaderboard: the machine, the commit, the load it ran under.

The records themselves are the package's one provenance module's (:mod:`flava_zoo._provenance`);
this module names them for the bench runner and report.
"""

from __future__ import annotations

from .._provenance import describe_machine, git_state, machine

__all__ = ["describe_machine", "git_state", "machine"]
