"""The statistics module: intervals and tests against values from published tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flava_zoo.stats import (
    Interval,
    bootstrap_interval,
    paired_bootstrap,
    t_cdf,
    t_interval,
    t_quantile,
    welch_test,
)


@pytest.mark.parametrize(
    "df, expected",  # Student's t table, two-sided 95%
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725), (1000, 1.9623391)],
)
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)


def test_t_cdf() -> None:
    assert t_cdf(0.0, 5) == 0.5
    assert t_cdf(2.0, 3) == pytest.approx(0.930337, abs=1e-6)
    assert t_cdf(-2.0, 3) == pytest.approx(1 - 0.930337, abs=1e-6)
    assert t_cdf(1.96, 1e7) == pytest.approx(0.9750021, abs=1e-6)  # the normal limit


def test_t_interval_over_seeds() -> None:
    iv = t_interval([1.0, 2.0, 3.0])
    half = 4.3026527 * 1.0 / math.sqrt(3)
    assert (iv.estimate, iv.method, iv.n) == (2.0, "t", 3)
    assert iv.low == pytest.approx(2 - half) and iv.high == pytest.approx(2 + half)
    one = t_interval([5.0])
    assert (one.low, one.high, one.method) == (5.0, 5.0, "none")
    with pytest.raises(ValueError, match="non-empty"):
        t_interval([])


def test_bootstrap_interval_of_a_proportion() -> None:
    correct = np.r_[np.ones(600), np.zeros(400)]
    iv = bootstrap_interval(correct)
    # normal approximation: 0.6 +- 1.96 * sqrt(0.24 / 1000) = +- 0.0304
    assert iv.estimate == 0.6 and (iv.method, iv.n, iv.resamples) == ("bootstrap", 1000, 1000)
    assert iv.low == pytest.approx(0.6 - 0.0304, abs=0.006)
    assert iv.high == pytest.approx(0.6 + 0.0304, abs=0.006)
    assert bootstrap_interval(correct) == iv  # seeded: the same interval again
    wider = bootstrap_interval(correct[::10])
    assert wider.high - wider.low > 2.5 * (iv.high - iv.low)


def test_bootstrap_interval_of_a_statistic_over_rows() -> None:
    rows = np.stack([np.arange(50.0), np.arange(50.0) * 2], axis=1)
    iv = bootstrap_interval(rows, lambda r: float(r[:, 1].sum() / r[:, 0].sum()), resamples=200)
    assert iv.estimate == pytest.approx(2.0) and iv.low == pytest.approx(2.0) and iv.high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one value per item"):
        bootstrap_interval(rows)


def test_welch_test_and_paired_bootstrap() -> None:
    t, p = welch_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.5])
    assert t == pytest.approx(-3.4125007, abs=1e-6) and p == pytest.approx(0.02915, abs=2e-4)
    assert welch_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, 1.0)
    assert welch_test([1.0, 1.0], [2.0, 2.0])[1] == 0.0
    with pytest.raises(ValueError, match="two runs"):
        welch_test([1.0], [2.0, 3.0])
    a = np.r_[np.ones(60), np.zeros(40)]
    same = paired_bootstrap(a, a)
    assert same[0].estimate == 0.0 and same[1] == 1.0
    better, p = paired_bootstrap(a, np.r_[np.ones(40), np.zeros(60)])
    assert better.estimate == pytest.approx(0.2) and better.low > 0 and p < 0.01


def test_interval_formats_and_round_trips() -> None:
    iv = Interval(52.345, 50.0, 54.5, n=10, resamples=1000)
    assert f"{iv}" == "52.3 [50.0, 54.5]" and iv.half_width == 2.25
    assert Interval.from_dict(iv.to_dict()) == iv


def test_unpaired_bootstrap_of_two_proportions():
    from flava_zoo.stats import unpaired_bootstrap

    a, b = np.r_[np.ones(300), np.zeros(200)], np.r_[np.ones(200), np.zeros(300)]
    iv = unpaired_bootstrap(a, b)
    # normal approximation: 0.2 +- 1.96 * sqrt(2 * 0.24 / 500) = +- 0.0607
    assert iv.estimate == pytest.approx(0.2) and iv.n == 1000
    assert iv.low == pytest.approx(0.2 - 0.0607, abs=0.012) and iv.high == pytest.approx(0.2 + 0.0607, abs=0.012)
