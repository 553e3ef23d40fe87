"""Reproducible CPU training: one source of run-to-run differences removed.

Seeds alone do not make two CPU runs equal. Intel MKL, torch's BLAS on x86, picks a code
path per call that may depend on the memory alignment of the operands, so one process can
sum a matrix product in another order than the next: two default quickstarts on one
machine once gave zero-shot R@1 7.0 / 7.1 and 8.8 / 9.2, and the weights of two short runs
differed after the first multimodal step. MKL's *conditional numerical reproducibility*
mode (``MKL_CBWR=AUTO,STRICT``) removes that dependence and keeps the best instruction set
of the machine; on flava-tiny's multimodal step it cost nothing measurable (794 vs 782 ms on
2 cores of an AMD EPYC; ``COMPATIBLE``, the SSE2 path, doubles the step).

MKL reads the setting at its first call, so it must be set before the process runs any
matrix product: ``flava-zoo`` sets it on start, before it imports the model code's users;
a script that trains in a process of its own calls :func:`reproducible_blas` first. A value
the user set is kept. Results still differ between thread counts (a sum split over more
threads is added in another order) and between machines, and two full runs of the 0.2
quickstart recipe on one machine (same arguments, 2 threads) agreed at step 80 of the
multimodal stage but not at step 120: another operation adds in a varying order there, not
found yet. Short runs with ``--deterministic true`` repeat exactly
(tests/test_reproducibility.py); without it they usually do, not always (one of three CI
runs on 2026-12-02 wrote different weights from two default 6-step runs).
"""

from __future__ import annotations

import os

BLAS_SETTING = "AUTO,STRICT"


def reproducible_blas() -> str:
    """Ask MKL for alignment-independent results (``MKL_CBWR``) unless the environment
    already says otherwise; return the setting in force. Effective only before the process's
    first MKL call."""
    return os.environ.setdefault("MKL_CBWR", BLAS_SETTING)
