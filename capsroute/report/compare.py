"""Pre-declared comparisons between cells, paired by seed, adjusted for how many are made.

A report that picks the best of several r and then tests it on the same numbers is biased. So
without a validation split the report names no winner; it makes a fixed list of comparisons
(every r against a reference r, every routing control against every dynamic r), each a paired
difference over the seeds both cells ran, and widens every interval by Bonferroni: with m
comparisons each interval has level 1 - 0.05/m, so all m hold together with 95%. A difference
is called higher or lower only when its adjusted interval excludes 0, and never with fewer
than two paired seeds.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from capsroute.report.stats import (
    Estimate,
    bonferroni_level,
    paired_difference,
    t_test_p_value,
)

LEVEL = 0.95  # family-wise confidence of every set of comparisons
PREFERRED_REFERENCE_R = 3  # the paper's choice, the reference when the runs have it
ADJUSTMENT = "Bonferroni"
DEGENERATE_STD = 1e-9  # a spread of paired differences below this is rounding, not data
MODE_AXIS = "routing.mode"  # the swept key of the routing controls
DYNAMIC = "dynamic"  # its value for Procedure 1; any other value is a control


@dataclass(frozen=True)
class Comparison:
    """treated - baseline over the seeds both have, with the adjusted interval.

    diff: its mean, std and the interval at `level` (already adjusted); p_adjusted: the
    two-sided paired t-test p-value times m (capped at 1), NaN with fewer than 2 pairs.
    """

    treated: str
    baseline: str
    diff: Estimate
    seeds: list[Hashable]
    level: float
    p_adjusted: float
    comparisons: int

    @property
    def pairs(self) -> int:
        return len(self.seeds)

    @property
    def degenerate(self) -> bool:
        """The same difference in every seed (e.g. two runs stuck at chance): a zero-width t
        interval that rests on no spread, so it decides nothing."""
        return self.pairs >= 2 and self.diff.std <= DEGENERATE_STD

    @property
    def direction(self) -> int:
        """+1 (interval above 0), -1 (below 0), 0 (contains 0, no interval, or degenerate)."""
        if self.pairs < 2 or math.isnan(self.diff.ci_low) or self.degenerate:
            return 0
        if self.diff.ci_low > 0:
            return 1
        return -1 if self.diff.ci_high < 0 else 0


def compare(
    pairs: Sequence[tuple[str, Mapping[Hashable, float], str, Mapping[Hashable, float]]],
    level: float = LEVEL,
) -> list[Comparison]:
    """Every (treated name, treated by seed, baseline name, baseline by seed) as a paired
    difference, the intervals adjusted together for the len(pairs) comparisons."""
    m = len(pairs)
    each = bonferroni_level(level, m)
    out = []
    for treated_name, treated, baseline_name, baseline in pairs:
        diff, seeds = paired_difference(treated, baseline, each)
        p = t_test_p_value(diff)
        out.append(
            Comparison(
                treated_name,
                baseline_name,
                diff,
                seeds,
                each,
                min(1.0, p * m) if not math.isnan(p) else p,
                m,
            )
        )
    return out


def reference_r(rs: Sequence[int], configured: int | None) -> tuple[int, str]:
    """The r every other r is compared with, and why (for the text): `report.reference_r`
    when set and present, else r = 3 when present, else the smallest r."""
    available = sorted(set(int(r) for r in rs))
    if configured is not None and configured in available:
        return configured, f"report.reference_r={configured}"
    if PREFERRED_REFERENCE_R in available:
        why = "r = 3, the paper's choice, is in the runs"
        if configured is not None:
            why = f"report.reference_r={configured} was not run; {why}"
        return PREFERRED_REFERENCE_R, why
    why = "the smallest r (no r = 3 in the runs)"
    if configured is not None:
        why = f"report.reference_r={configured} was not run; {why}"
    return available[0], why


def by_seed(cell: pd.DataFrame, column: str) -> dict[Hashable, float]:
    """{seed: value} of one cell's runs."""
    return dict(zip(cell["seed"], cell[column], strict=True))


def comparison_frame(comparisons: Sequence[Comparison], **keys: object) -> pd.DataFrame:
    """The comparisons as table rows (fractions, not percent), `keys` in front."""
    rows = [
        {
            **keys,
            "treated": c.treated,
            "baseline": c.baseline,
            "n_pairs": c.pairs,
            "seeds": " ".join(str(s) for s in c.seeds),
            "diff_mean": c.diff.mean,
            "diff_std": c.diff.std,
            "diff_ci_low": c.diff.ci_low,
            "diff_ci_high": c.diff.ci_high,
            "interval_level": c.level,
            "comparisons": c.comparisons,
            "p_adjusted": c.p_adjusted,
        }
        for c in comparisons
    ]
    return pd.DataFrame(rows)
