"""Findings a reviewer cannot fault: r chosen on validation, else pre-declared comparisons.

The run set below is built so that the test set and the validation split disagree: r=3 has
the best final test accuracy, r=5 the best validation accuracy. Numbers are checked against
hand arithmetic; t factors from a printed t table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from capsroute.report.aggregate import comparison_table, per_run
from capsroute.report.findings import findings
from capsroute.report.runset import RunSet, load_runs
from tests.report.fixtures import metrics_rows, run_config, write_run

# (r) -> per seed 0, 1, 2: (final validation accuracy, final test accuracy)
DISAGREE = {
    1: [(0.90, 0.90), (0.91, 0.92), (0.92, 0.92)],
    3: [(0.93, 0.96), (0.95, 0.97), (0.95, 0.98)],  # best on test
    5: [(0.96, 0.93), (0.97, 0.95), (0.98, 0.94)],  # best on validation
}
# two-sided t factors, 2 degrees of freedom (3 seeds): 95% and Bonferroni for 2 (97.5% each)
T_95_DF2 = 4.3027
T_975_DF2 = 6.2053
STD_ONE_POINT = 0.01  # the paired differences below have sample std 0.01 or sqrt(1/3)*0.01


def write_set(root: Path, validation: bool, seeds: int = 3, epochs: int = 2) -> RunSet:
    """Runs of DISAGREE: epoch 1 is 5 points below the final epoch on both splits."""
    for r, finals in DISAGREE.items():
        for seed, (val, test) in list(enumerate(finals))[:seeds]:
            metrics = metrics_rows(
                [test - 0.05, test][-epochs:],
                [0.99, 0.99][-epochs:],
                [0.3, 0.2][-epochs:],
                val_acc=[val - 0.05, val][-epochs:] if validation else None,
            )
            changes = {"dataset.val_size": 1000} if validation else {}
            config = run_config("mnist", r, seed, epochs, **changes)
            write_run(root / f"r{r}" / f"s{seed}", config, metrics)
    return load_runs([root])


def sentences(runset: RunSet, reference: int | None = None) -> tuple[pd.DataFrame, str]:
    runs = per_run(runset.epochs, runset.group_columns)
    text = findings(runs, runset.axes, "final_test_acc", reference, runset.configs)
    return runs, "\n".join(text)


def test_validation_names_its_r_and_reports_that_r_on_test(tmp_path: Path) -> None:
    _, text = sentences(write_set(tmp_path, validation=True))
    assert "r=5 has the highest mean validation accuracy (r=1: 91.00%, r=3: 94.33%" in text
    assert "r=3 has the highest" not in text  # the test set's best is never named
    # r=5's test accuracy at its validation-chosen epoch (the last): 0.93, 0.95, 0.94
    assert "test accuracy at the epoch chosen on validation is 94.00% ± 1.00" in text
    # r=5 - r=1 on test: 0.03, 0.03, 0.02 -> mean 0.02667, std 0.005774; 2 comparisons:
    # half = 6.2053 * 0.005774 / sqrt(3) = 0.02068 -> [+0.60, +4.74] points, excludes 0
    assert "95% intervals Bonferroni-adjusted for 2 comparisons (each at 97.50%)" in text
    assert "r=5 − r=1: +2.67 points [+0.60, +4.74], n=3: higher" in text
    # r=5 - r=3: -0.03, -0.02, -0.04 -> mean -0.03, std 0.01; half 6.2053 * 0.01 / sqrt(3)
    assert "r=5 − r=3: -3.00 points [-6.58, +0.58], n=3: no difference shown" in text
    # claim: r=3 against r=1 and r=5 on validation; r=5 is better (3 - 5: -0.03, -0.02,
    # -0.03 -> interval below 0), so the claim is not supported
    assert "Claim 'r = 3 is the right choice' on mnist: not supported." in text
    assert "on the validation accuracy at the epoch chosen on validation" in text


def test_without_validation_no_winner_and_adjusted_pairwise_intervals(tmp_path: Path) -> None:
    runset = write_set(tmp_path, validation=False)
    runs, text = sentences(runset)
    assert "no r is named best" in text and "has the highest" not in text
    table = comparison_table(runs, runset.group_columns, "final_test_acc")
    assert table[["treated", "baseline"]].values.tolist() == [["r=1", "r=3"], ["r=5", "r=3"]]
    one, five = table.iloc[0], table.iloc[1]
    # r=1 - r=3: -0.06, -0.05, -0.06 -> mean -0.05667, std 0.005774
    std = STD_ONE_POINT / math.sqrt(3)
    assert one["diff_mean"] == pytest.approx(-0.17 / 3, abs=1e-12)
    assert one["diff_std"] == pytest.approx(std, abs=1e-9)
    half = T_975_DF2 * std / math.sqrt(3)
    assert one["diff_ci_low"] == pytest.approx(-0.17 / 3 - half, abs=1e-5)
    assert one["diff_ci_high"] == pytest.approx(-0.17 / 3 + half, abs=1e-5)
    # r=5 - r=3: -0.03, -0.02, -0.04 -> mean -0.03, std 0.01
    half = T_975_DF2 * STD_ONE_POINT / math.sqrt(3)
    assert five["diff_ci_low"] == pytest.approx(-0.03 - half, abs=1e-5)
    assert five["diff_ci_high"] == pytest.approx(-0.03 + half, abs=1e-5)
    assert five["interval_level"] == pytest.approx(0.975) and five["comparisons"] == 2
    # p: t = 0.03 / (0.01 / sqrt 3) = 5.196, df 2 -> two-sided 0.0351, times 2 comparisons
    assert five["p_adjusted"] == pytest.approx(0.0702, abs=5e-4)
    assert "reference r=3: r = 3, the paper's choice, is in the runs" in text
    # -0.05667 -/+ 6.2053 * 0.005774 / sqrt(3) = -0.0774, -0.0360
    assert "r=1 − r=3: -5.67 points [-7.74, -3.60], n=3: lower" in text
    # the claim on the test set, pre-declared: r=3 beats r=1, but not clearly r=5
    assert "Claim 'r = 3 is the right choice' on mnist: cannot tell with n = 3." in text
    assert "(no validation split: a pre-declared comparison on the test set)" in text


def test_the_reference_r_comes_from_the_config(tmp_path: Path) -> None:
    runset = write_set(tmp_path, validation=False)
    runs, text = sentences(runset, reference=5)
    assert "reference r=5: report.reference_r=5" in text
    table = comparison_table(runs, runset.group_columns, "final_test_acc", reference=5)
    assert table[["treated", "baseline"]].values.tolist() == [["r=1", "r=5"], ["r=3", "r=5"]]
    _, text = sentences(runset, reference=7)
    assert "report.reference_r=7 was not run; r = 3, the paper's choice" in text


def test_one_seed_gives_no_interval_no_verdict_and_short_runs_are_convergence_speed(
    tmp_path: Path,
) -> None:
    _, text = sentences(write_set(tmp_path, validation=False, seeds=1))
    assert "r=1 − r=3: -6.00 points (n = 1: no interval, so no better or worse)" in text
    assert "Claim 'more routing iterations overfit' on mnist: cannot tell with n = 1." in text
    assert "Claim 'r = 3 is the right choice' on mnist: cannot tell with n = 1." in text
    # 2 epochs, fewer than the default train.epochs = 10
    assert "2 epoch(s) (fewer than the default 10)" in text
    assert "measure convergence speed, not the final accuracy" in text


def test_mixed_training_lengths_are_flagged(tmp_path: Path) -> None:
    write_set(tmp_path, validation=False)
    rows = metrics_rows([0.99], [0.99], [0.2])  # r=3 seed 0 stopped after 1 epoch
    write_run(tmp_path / "r3" / "s0", run_config("mnist", 3, 0, 2), rows)
    _, text = sentences(load_runs([tmp_path]))
    assert "the runs of cell 3 trained for different lengths (1, 2 epochs" in text


def test_runs_without_the_margin_test_loss_report_overfitting_on_the_total(
    tmp_path: Path,
) -> None:
    for r in (1, 3):
        rows = metrics_rows([0.9, 0.9], [0.99, 0.99], [0.2, 0.3])
        for row in rows:
            row["test_margin_loss"] = None  # recorded before the column existed
        write_run(tmp_path / f"r{r}", run_config("mnist", r, 0, 2), rows)
    runs, text = sentences(load_runs([tmp_path]))
    assert runs["overfit_loss"].tolist() == ["total", "total"]
    assert runs["overfit"].tolist() == pytest.approx([0.1, 0.1])
    assert "test-loss rise (total loss incl. reconstruction for runs recorded" in text


def test_runs_at_chance_are_flagged_and_decide_no_claim(tmp_path: Path) -> None:
    """r=5 stuck at 10% (chance for 10 classes) in both seeds: its zero gap is no evidence
    about overfitting, and identical differences in every seed give no interval."""
    for r, final in ((1, 0.90), (5, 0.10)):
        for seed in (0, 1):
            rows = metrics_rows([final, final], [final + 0.05 * (r == 1)] * 2, [0.3, 0.2])
            write_run(tmp_path / f"r{r}" / f"s{seed}", run_config("mnist", r, seed, 2), rows)
    _, text = sentences(load_runs([tmp_path]))
    assert (
        "Claim 'more routing iterations overfit' on mnist: cannot tell with n = 2 "
        "(r=5 did not learn in 2 of 2 runs: accuracy at chance)."
    ) in text
    assert "Flag: on mnist, r=5 did not learn in 2 of 2 runs" in text
    # gap r=5 - r=1: 0.00 - 0.05 in both seeds: the same difference, no spread
    assert "gap r=5 − r=1: -5.00 points in each of n=2 seeds (no spread to judge" in text
