"""How numbers read in findings sentences: percent, signed points, mean ± std, comparisons.

Shared by `findings` and `hypotheses`, so that every sentence words an interval, a seed count
and a verdict the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from capsroute.report.compare import ADJUSTMENT, DYNAMIC, MODE_AXIS, Comparison
from capsroute.report.runset import axis_label
from capsroute.report.stats import Estimate


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def signed(value: float, scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * value:+.{digits}f}"


def mean_std(value: Estimate, long: bool = True) -> str:
    if value.n < 2:
        return f"{pct(value.mean)}%" + (" (n=1)" if long else "")
    text = f"{pct(value.mean)}% ± {pct(value.std)}"
    return text + (f" (mean ± std, n={value.n})" if long else "")


def adjustment_text(comparisons: Sequence[Comparison]) -> str:
    """'95% intervals, Bonferroni-adjusted for m comparisons (each at 98.75%)'."""
    if not comparisons:
        return ""
    m, each = comparisons[0].comparisons, comparisons[0].level
    if m == 1:
        return "95% t interval"
    return f"95% intervals {ADJUSTMENT}-adjusted for {m} comparisons (each at {100 * each:.2f}%)"


def comparison_text(
    c: Comparison, unit: str = "points", scale: float = 100.0, digits: int = 2
) -> str:
    """'r=5 − r=3: +0.40 points [−1.20, +2.00], n=2: no difference shown'."""
    head = f"{c.treated} − {c.baseline}: {signed(c.diff.mean, scale, digits)}"
    head += f" {unit}" if unit else ""
    if c.pairs < 2 or math.isnan(c.diff.ci_low):
        return f"{head} (n = {c.pairs}: no interval, so no better or worse)"
    if c.degenerate:
        return f"{head} in each of n={c.pairs} seeds (no spread to judge: no better or worse)"
    interval = f"[{signed(c.diff.ci_low, scale, digits)}, {signed(c.diff.ci_high, scale, digits)}]"
    shown = {1: "higher", -1: "lower", 0: "no difference shown"}[c.direction]
    return f"{head} {interval}, n={c.pairs}: {shown}"


def blocks(runs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) per dataset x `axes` value, named 'mnist (routing grad=last)'."""
    outer = ["dataset", *axes]
    found = []
    for key, block in runs.groupby(outer, sort=True):
        values = key if isinstance(key, tuple) else (key,)
        extra = ", ".join(axis_label(a, v) for a, v in zip(axes, values[1:], strict=True))
        found.append((f"{values[0]}" + (f" ({extra})" if extra else ""), block))
    return found


def dynamic_rows(block: pd.DataFrame) -> pd.DataFrame:
    """The runs of `block` trained with dynamic routing (all of them when mode is not swept)."""
    if MODE_AXIS not in block.columns:
        return block
    return block[block[MODE_AXIS] == DYNAMIC]


def min_pairs(comparisons: Sequence[Comparison]) -> int:
    return min((c.pairs for c in comparisons), default=0)
