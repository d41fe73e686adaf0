"""The two claims a routing-iteration study is asked to test, answered from the runs.

- "more routing iterations overfit": the final generalisation gap (train-eval minus test
  accuracy) and the rise of the margin-only test loss from its minimum, at the largest r
  against the smallest (a pre-declared pair), paired by seed;
- "r = 3 is the right choice": r = 3 against every other r on the validation accuracy (at the
  epoch chosen on validation) when every run has a validation split, else on the headline
  test metric as a pre-declared comparison.

Each sentence ends "supported", "not supported" or "cannot tell with n = ...", by a fixed
rule on the Bonferroni-adjusted intervals. Overfitting: supported when an interval shows the
rise and none the opposite; not supported when one shows the opposite and none the rise. The
choice of r = 3: supported when r = 3 is better than every other r; not supported when any r
is better than r = 3. Cannot tell otherwise (intervals containing 0, conflicting evidence,
fewer than two paired seeds). No sentence is written to agree with the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from capsroute.data.files import DATASET_INFO
from capsroute.report.compare import PREFERRED_REFERENCE_R, Comparison, by_seed, compare
from capsroute.report.wording import adjustment_text, comparison_text, min_pairs

OVERFIT_CLAIM = "more routing iterations overfit"
CHOICE_CLAIM = f"r = {PREFERRED_REFERENCE_R} is the right choice"
CHANCE_MARGIN = 0.02  # final train-eval accuracy within 2 points of 1/K: did not learn
METRIC_WORDS = {
    "final_test_acc": ("final test accuracy", True),
    "final_test_error": ("final test error", False),
}


def verdict(directions: Sequence[int], pairs: int) -> str:
    """+1 per comparison that shows the claim, -1 the opposite, 0 neither -> the verdict."""
    if pairs < 2:
        return f"cannot tell with n = {pairs}"
    if any(d > 0 for d in directions) and not any(d < 0 for d in directions):
        return "supported"
    if any(d < 0 for d in directions) and not any(d > 0 for d in directions):
        return "not supported"
    return f"cannot tell with n = {pairs}"


def choice_verdict(directions: Sequence[int], pairs: int) -> str:
    """A choice is right when it beats every other r: supported when every comparison shows
    r = 3 better, not supported when any shows it worse, cannot tell otherwise."""
    if pairs < 2:
        return f"cannot tell with n = {pairs}"
    if any(d < 0 for d in directions):
        return "not supported"
    return "supported" if all(d > 0 for d in directions) else f"cannot tell with n = {pairs}"


def at_chance(runs: pd.DataFrame) -> pd.Series:
    """Per run: its final train-eval accuracy is within CHANCE_MARGIN of chance (1/K): the
    network did not learn, so its gap and loss rise say nothing about overfitting."""
    chance = runs["dataset"].map(lambda name: 1.0 / DATASET_INFO[name].num_classes)
    return runs["final_train_eval_acc"] <= chance + CHANCE_MARGIN


def chance_text(cells: dict[int, pd.DataFrame]) -> str:
    """'r=5 did not learn in 2 of 2 runs' for the cells with runs at chance, else ''."""
    parts = [
        f"r={r} did not learn in {int(at_chance(cell).sum())} of {len(cell)} runs"
        for r, cell in cells.items()
        if at_chance(cell).any()
    ]
    return "; ".join(parts)


def validated(block: pd.DataFrame) -> bool:
    """Every run of `block` held out a validation split (its best-val numbers exist)."""
    return bool(len(block)) and bool(block["best_val_acc"].notna().all())


def overfit_sentence(where: str, dynamic: pd.DataFrame) -> str:
    """'more routing iterations overfit' on `dynamic` (runs with dynamic routing)."""
    head = f"Claim '{OVERFIT_CLAIM}' on {where}:"
    rs = sorted(dynamic["r"].unique())
    if len(rs) < 2:
        only = ", ".join(str(r) for r in rs) or "none"
        return f"{head} cannot tell with n = 0 (only r = {only} was run)."
    low, high = rs[0], rs[-1]
    cells = {r: dynamic[dynamic["r"] == r] for r in (low, high)}
    total = bool((dynamic["overfit_loss"] == "total").any())
    loss_words = "test-loss rise" + (
        " (total loss incl. reconstruction for runs recorded before the margin-only column)"
        if total
        else " (margin loss only)"
    )
    found = compare(
        [
            (f"r={high}", by_seed(cells[high], column), f"r={low}", by_seed(cells[low], column))
            for column in ("gap_final", "overfit")
        ]
    )
    gap, loss = found
    means = dynamic.groupby("r")[["gap_final", "overfit"]].mean()
    r_list = ", ".join(str(r) for r in rs)
    gaps = ", ".join(f"{100 * g:.2f}" for g in means["gap_final"])
    rises = ", ".join(f"{x:.4f}" for x in means["overfit"])
    answer = verdict([gap.direction, loss.direction], min_pairs(found))
    failed = chance_text(cells)
    if failed:  # a network that did not learn neither fits nor overfits
        answer = f"cannot tell with n = {min_pairs(found)} ({failed}: accuracy at chance)"
    return (
        f"{head} {answer}. Evidence: the final generalisation gap (train-eval minus test "
        f"accuracy) is {gaps} points and the {loss_words} from its minimum is {rises} for "
        f"r = {r_list} (means over seeds); paired by seed, {adjustment_text(found)}: gap "
        f"{comparison_text(gap)}; loss rise {comparison_text(loss, '', 1.0, 4)}."
    )


def choice_sentence(where: str, dynamic: pd.DataFrame, metric: str) -> str:
    """'r = 3 is the right choice' on `dynamic`: on validation when every run has it."""
    head = f"Claim '{CHOICE_CLAIM}' on {where}:"
    target = PREFERRED_REFERENCE_R
    rs = sorted(dynamic["r"].unique())
    if target not in rs:
        return f"{head} cannot tell with n = 0 (r = {target} was not run)."
    if len(rs) == 1:
        return f"{head} cannot tell with n = 0 (only r = {target} was run)."
    if validated(dynamic):
        column, words, higher_better = "best_val_acc", "validation accuracy", True
        words += " at the epoch chosen on validation"
    else:
        column = metric
        words, higher_better = METRIC_WORDS[metric]
        words += " (no validation split: a pre-declared comparison on the test set)"
    mine = by_seed(dynamic[dynamic["r"] == target], column)
    found: list[Comparison] = compare(
        [
            (f"r={target}", mine, f"r={r}", by_seed(dynamic[dynamic["r"] == r], column))
            for r in rs
            if r != target
        ]
    )
    sign = 1 if higher_better else -1
    answer = choice_verdict([sign * c.direction for c in found], min_pairs(found))
    parts = "; ".join(comparison_text(c) for c in found)
    return (
        f"{head} {answer}. Evidence: r = {target} against every other r on the {words}, "
        f"paired by seed, {adjustment_text(found)}: {parts}."
    )
