"""The viewpoint-robustness table, figure and finding from a hand-built run set.

Nine mnist40 runs (CapsNet r = 1 and r = 3, baseline CNN; seeds 0-2) with eval_cross.csv rows
written by hand, so every cell can be checked against numbers worked out here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from capsroute import io as capsroute_io
from capsroute.report import robustness
from capsroute.report.build import Report, make_report
from capsroute.run.rundir import EVAL_CROSS_COLUMNS, EVAL_CROSS_FILE
from tests.report.fixtures import metrics_rows, run_config, write_run

# (model kind, r) -> per seed (own expanded-MNIST test accuracy, affine_mnist accuracy)
CELLS = {
    ("capsnet", 1): [(0.99, 0.80), (0.98, 0.78), (0.97, 0.79)],  # drops 19, 20, 18 points
    ("capsnet", 3): [(0.99, 0.70), (0.99, 0.71), (0.98, 0.69)],  # drops 29, 28, 29
    ("baseline_cnn", 1): [(0.99, 0.66), (0.99, 0.65), (0.99, 0.67)],  # drops 33, 34, 32
}


def write_runs(root: Path, validated: bool, seeds: int = 3) -> Path:
    for (kind, r), values in CELLS.items():
        for seed, (own, other) in enumerate(values[:seeds]):
            changes = {"model.kind": kind, "dataset.val_size": 500 if validated else None}
            if kind == "baseline_cnn":
                changes["model.reconstruction"] = False
            config = run_config("mnist40", r, seed, 2, **changes)
            run_dir = root / f"{kind}-r{r}-s{seed}"
            write_run(run_dir, config, metrics_rows([0.5, own], [0.5, own], [1.0, 0.5]))
            rows = [
                {"epoch": 2, "dataset": "affine_mnist", "mode": "dynamic", "train_r": r,
                 "eval_r": r, "images": 100, "accuracy": other, "own_test_acc": own},
                # another eval r: not the run's own routing, so not in the table
                {"epoch": 2, "dataset": "affine_mnist", "mode": "dynamic", "train_r": r,
                 "eval_r": r + 1, "images": 100, "accuracy": 0.1, "own_test_acc": None},
                # its own test set again (evaluate --dataset mnist40): no drop to report
                {"epoch": 2, "dataset": "mnist40", "mode": "dynamic", "train_r": r,
                 "eval_r": r, "images": 100, "accuracy": own, "own_test_acc": own},
                # an older checkpoint's row: ignored
                {"epoch": 1, "dataset": "affine_mnist", "mode": "dynamic", "train_r": r,
                 "eval_r": r, "images": 100, "accuracy": 0.2, "own_test_acc": 0.5},
            ]  # fmt: skip
            capsroute_io.write_csv(run_dir / EVAL_CROSS_FILE, rows, EVAL_CROSS_COLUMNS)
    return root


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The report of the nine runs, trained with a validation split (built once)."""
    root = write_runs(tmp_path_factory.mktemp("robust") / "set", validated=True)
    return make_report([root], formats=["md", "csv"])


def test_table_holds_mean_and_std_of_own_other_and_drop_beside_the_paper(
    validated: Report,
) -> None:
    report = validated
    table = robustness.robustness_table(report.robustness)
    by_model = {(row["model"], row["r"]): row for _, row in table.iterrows()}
    assert set(by_model) == {("CapsNet", "1"), ("CapsNet", "3"), ("baseline CNN", "–")}
    caps1 = by_model[("CapsNet", "1")]
    assert caps1["n"] == 3 and caps1["test set"] == "affNIST approximation (affine_mnist)"
    assert (caps1["own test %"], caps1["other set %"], caps1["drop (pts)"]) == (
        "98.00 ± 1.00", "79.00 ± 1.00", "19.00 ± 1.00",
    )  # fmt: skip
    assert caps1["paper"] == "79% on affNIST, trained to 99.23% expanded MNIST"
    cnn = by_model[("baseline CNN", "–")]
    assert cnn["drop (pts)"] == "33.00 ± 1.00"
    assert cnn["paper"] == "66% on affNIST, trained to 99.22% expanded MNIST"
    markdown = (report.out_dir / "report.md").read_text()
    assert robustness.TITLE in markdown and "robustness_vs_r" in markdown
    assert (report.out_dir / "figures" / robustness.FIGURE).stat().st_size > 0
    saved = pd.read_csv(report.out_dir / "robustness.csv")
    assert len(saved) == 9 and set(saved["eval_dataset"]) == {"affine_mnist"}
    assert saved["drop"].round(4).tolist().count(0.19) == 1


@pytest.mark.parametrize(
    ("with_validation", "verdict"),
    [
        (True, "which excludes 0: r=1 is more robust on this set."),
        (False, "which excludes 0, but the epochs were not chosen on a validation split"),
    ],
)
def test_finding_is_paired_by_seed_and_needs_validation_to_name_a_winner(
    validated: Report, tmp_path: Path, with_validation: bool, verdict: str
) -> None:
    report = validated
    if not with_validation:
        report = make_report([write_runs(tmp_path / "set", False)], formats=["md"])
    (sentence,) = [line for line in report.findings if "accuracy drop" in line]
    # drops r=3 minus r=1 by seed: 10, 8, 11 points: mean 9.67, std 1.53, t(2) = 4.303
    assert "r=1: 19.00 ± 1.00 (n=3); r=3: 28.67 ± 0.58 (n=3)" in sentence
    assert "r=1 drops least, 9.67 points less than r=3" in sentence
    assert "95% CI [+5.87, +13.46] points (n=3)" in sentence and verdict in sentence
    assert "The baseline CNN drops 33.00 ± 1.00 points (n=3)." in sentence


def test_one_seed_gives_no_interval_and_no_winner(tmp_path: Path) -> None:
    report = make_report([write_runs(tmp_path / "set", True, seeds=1)], formats=["md"])
    (sentence,) = [line for line in report.findings if "accuracy drop" in line]
    assert "r=1: 19.00 (n=1); r=3: 29.00 (n=1)" in sentence
    assert "With 1 seed(s) in common the seed spread cannot be judged" in sentence
    assert "r is not shown to change robustness" in sentence


def test_reports_without_cross_evaluations_have_no_robustness_section(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write_run(root / "a", run_config("mnist40", 1, 0, 1), metrics_rows([0.9], [0.9], [0.3]))
    report = make_report([root], formats=["md"])
    assert report.robustness.empty
    assert robustness.TITLE not in (report.out_dir / "report.md").read_text()
