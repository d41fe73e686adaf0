"""Small-sample statistics for seed replicates: mean, std, and t-distribution intervals.

A routing study has a handful of seeds per cell, so intervals must use Student's t, not the
normal approximation (with 3 seeds the 95% factor is 4.303, not 1.96). scipy is not a
dependency; for the integer degrees of freedom that seed counts give, the t distribution has
a closed form (Abramowitz & Stegun 26.7.3-4), inverted here by bisection to ~1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

NAN = float("nan")


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with `df` (integer >= 1) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):
                term *= (k - 1) / k * cos2
                total += term
        return 2 / math.pi * (theta + sin * total)
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):
        term *= (k - 1) / k * cos2
        total += term
    return sin * total


def t_quantile(level: float, df: int) -> float:
    """The factor t such that P(|T| < t) = `level`: the half-width multiplier of a CI."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    low, high = 0.0, 1.0
    while t_two_sided_probability(high, df) < level:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_two_sided_probability(mid, df) < level:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    """Mean over replicates with sample std (ddof=1) and a t interval; NaN where n < 2."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def estimate(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean, sample standard deviation and `level` t-interval of the mean of `values`."""
    data = [float(v) for v in values if not math.isnan(float(v))]
    n = len(data)
    if n == 0:
        return Estimate(0, NAN, NAN, NAN, NAN)
    mean = math.fsum(data) / n
    if n < 2:
        return Estimate(1, mean, NAN, NAN, NAN)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    half = t_quantile(level, n - 1) * std / math.sqrt(n)
    return Estimate(n, mean, std, mean - half, mean + half)


def paired_difference(
    treated: Mapping[Hashable, float], baseline: Mapping[Hashable, float], level: float = 0.95
) -> tuple[Estimate, list[Hashable]]:
    """Estimate of treated - baseline over the keys (seeds) both have; also returns the keys.

    Pairing by seed removes the seed-to-seed variation both conditions share (same data
    subset, same initialisation stream), so it is tighter than comparing two means.
    """
    keys = sorted(set(treated) & set(baseline), key=str)
    return estimate([treated[k] - baseline[k] for k in keys], level), keys


def t_test_p_value(diff: Estimate) -> float:
    """Two-sided p-value of a one-sample t test of mean 0 for `diff` (NaN when n < 2)."""
    if diff.n < 2 or math.isnan(diff.std):
        return NAN
    if diff.std == 0:
        return 1.0 if diff.mean == 0 else 0.0
    t = abs(diff.mean) / (diff.std / math.sqrt(diff.n))
    return max(0.0, 1.0 - t_two_sided_probability(t, diff.n - 1))


def bonferroni_level(level: float, comparisons: int) -> float:
    """Each interval's level so that `comparisons` intervals hold together with `level`:
    1 - (1 - level) / m (Bonferroni)."""
    return 1.0 - (1.0 - level) / max(comparisons, 1)
