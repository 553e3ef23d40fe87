"""Intervals and tests for every number the package reports: probes and the leaderboard.

Two kinds of uncertainty, two intervals:

* **over test items**, for one model: :func:`bootstrap_interval` resamples the items with
  replacement (1,000 resamples by default) and takes the 2.5th and 97.5th percentiles of
  the statistic (the percentile bootstrap, Efron & Tibshirani 1993, ch. 13);
* **over seeds**, across runs: :func:`t_interval` gives the mean of the runs' values and
  ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (Student's t with ``n - 1`` degrees of freedom).

:func:`welch_test` compares two groups of runs (Welch's unequal-variance t-test, two-sided)
and :func:`paired_bootstrap` two statistics measured on the same items (and
:func:`unpaired_bootstrap` two means over different item sets), so a difference is called
significant only when it is.

Hand-written on numpy and ``math``, not scipy: scipy is not a dependency of the core
install, and the t quantile and CDF needed here are a few lines (:func:`t_quantile`,
:func:`t_cdf`, checked against tables in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "Interval",
    "bootstrap_interval",
    "paired_bootstrap",
    "t_cdf",
    "t_interval",
    "t_quantile",
    "unpaired_bootstrap",
    "welch_test",
]

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval.

    ``method``: ``"bootstrap"`` (percentile bootstrap over ``n`` test items, ``resamples``
    resamples), ``"t"`` (Student's t over ``n`` runs) or ``"none"`` (a single run: no
    interval, ``low == high == estimate``).
    """

    estimate: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    method: str = "bootstrap"
    n: int = 0
    resamples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The interval as a JSON object (a results record's ``interval``)."""
        out = asdict(self)
        if out["resamples"] is None:
            del out["resamples"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        """Read :meth:`to_dict`'s output back."""
        return cls(**data)

    @property
    def half_width(self) -> float:
        """Half the interval's width (``+-`` in a table)."""
        return (self.high - self.low) / 2.0

    def __format__(self, spec: str) -> str:
        spec = spec or ".1f"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _as_items(values: Any, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty sequence, got {values!r}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds a value that is not finite")
    return array


def bootstrap_interval(
    values: Any,
    statistic: Callable[[np.ndarray], float] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of ``statistic`` over test items.

    ``values``: one entry per test item (a 1-D array, or a 2-D array of per-item rows, e.g.
    ``(score, label)`` pairs for an AUROC); ``statistic``: array of items -> number, default
    the mean. Each of ``resamples`` resamples draws ``len(values)`` items with replacement
    (a ``numpy`` generator seeded with ``seed``: the same inputs give the same interval);
    the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the
    resampled statistics, the estimate the statistic on all items.
    """
    items = _as_items(values)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = len(items)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    if statistic is None:
        if items.ndim != 1:
            raise ValueError("the default statistic (the mean) needs one value per item")
        estimate = float(items.mean())
        stats = items[picks].mean(axis=1)
    else:
        estimate = float(statistic(items))
        stats = np.array([float(statistic(items[p])) for p in picks])
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        raise ValueError("the statistic is not finite on any resample")
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), level, "bootstrap", n, resamples)


def paired_bootstrap(
    a: Any,
    b: Any,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[Interval, float]:
    """Interval of ``mean(a) - mean(b)`` for two per-item scores on the same items, and its
    two-sided bootstrap p-value (twice the smaller share of resampled differences on either
    side of zero, at least ``1 / resamples``). Items are resampled jointly, so what the two
    share cancels."""
    a, b = _as_items(a, "a"), _as_items(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same items, got shapes {a.shape} and {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    diffs = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    interval = Interval(float(d.mean()), float(low), float(high), level, "bootstrap", len(d), resamples)
    p = 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    return interval, min(1.0, max(p, 1.0 / resamples))


def unpaired_bootstrap(
    a: Any,
    b: Any,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Interval of ``mean(a) - mean(b)`` for two **independent** samples (per-item scores of
    two different item sets, e.g. seen and held-out test items, where pairing items would
    mean nothing). Each resample draws ``len(a)`` items of ``a`` and ``len(b)`` of ``b``
    with replacement, independently; the interval is the percentiles of the differences of
    the resampled means. ``n`` is ``len(a) + len(b)``."""
    x, y = _as_items(a, "a"), _as_items(b, "b")
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError("unpaired_bootstrap needs two 1-D samples")
    rng = np.random.default_rng(seed)
    da = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    db = y[rng.integers(0, len(y), size=(resamples, len(y)))].mean(axis=1)
    low, high = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean() - y.mean()), float(low), float(high), level, "bootstrap", len(x) + len(y), resamples)


def t_interval(values: Sequence[float], level: float = DEFAULT_LEVEL) -> Interval:
    """Mean over runs (seeds) with Student's t interval, ``n - 1`` degrees of freedom.

    One run gives no interval (``method="none"``, low = high = the value)."""
    runs = _as_items(values)
    n = len(runs)
    mean = float(runs.mean())
    if n == 1:
        return Interval(mean, mean, mean, level, "none", 1)
    sd = float(runs.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, level, "t", n)


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's two-sided t-test of ``mean(a) == mean(b)``: ``(t, p)``.

    Degrees of freedom by the Welch-Satterthwaite equation. Two groups without any spread
    give ``p = 0`` if their means differ and ``p = 1`` if not; a group of one run cannot be
    tested (``ValueError``)."""
    a, b = _as_items(a, "a"), _as_items(b, "b")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's test needs at least two runs in each group")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return (math.copysign(math.inf, diff) if diff else 0.0), (0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(2.0 * (1.0 - t_cdf(abs(t), df)))


# ----------------------------------------------------------- Student's t distribution
def t_cdf(t: float, df: float) -> float:
    """The CDF of Student's t with ``df`` degrees of freedom, through the regularised
    incomplete beta function: ``P(T <= t) = 1 - I_x(df/2, 1/2) / 2`` for ``t >= 0``, with
    ``x = df / (df + t^2)``."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` by its continued fraction
    (modified Lentz; Press et al., Numerical Recipes, 3rd ed., section 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a
