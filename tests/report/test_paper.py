"""Table 1 of the paper beside our runs: rows, matching and numbers (no training)."""

from __future__ import annotations

import pandas as pd
import pytest

from capsroute.report.paper import ENSEMBLE_COLUMNS, TABLE1, TABLE1_COLUMNS, ensemble_table, table1


def per_run(rows: list[tuple[str, str, int, int, float]]) -> pd.DataFrame:
    """(run, dataset, r, seed, final test error as a fraction) -> an aggregate.per_run frame."""
    return pd.DataFrame(rows, columns=["run", "dataset", "r", "seed", "final_test_error"])


def config(recon: bool, kind: str = "capsnet", size: int | None = None) -> dict[str, object]:
    return {
        "model.reconstruction": recon,
        "model.kind": kind,
        "dataset.train_size": size,
        "train.epochs": 50,
    }


def test_rows_follow_the_paper_with_its_values() -> None:
    assert [(row.method, row.routing, row.reconstruction) for row in TABLE1] == [
        ("baseline", None, None),
        ("CapsNet", 1, False),
        ("CapsNet", 1, True),
        ("CapsNet", 3, False),
        ("CapsNet", 3, True),
    ]
    assert [(row.error_mean, row.error_std) for row in TABLE1] == [
        (0.39, None),
        (0.34, 0.032),
        (0.29, 0.011),
        (0.35, 0.036),
        (0.25, 0.005),
    ]


def test_runs_are_matched_by_r_and_reconstruction_and_averaged_over_seeds() -> None:
    runs = per_run(
        [
            ("r3-recon-s0", "mnist", 3, 0, 0.0030),
            ("r3-recon-s1", "mnist", 3, 1, 0.0040),
            ("r1-plain-s0", "mnist", 1, 0, 0.0050),
            ("cnn-s0", "mnist", 3, 0, 0.0060),
            ("cifar-s0", "cifar10", 3, 0, 0.2500),  # not MNIST: never in Table 1
            ("r5-recon-s0", "mnist", 5, 0, 0.0010),  # no such row in the paper
        ]
    )
    configs = {
        "r3-recon-s0": config(True),
        "r3-recon-s1": config(True),
        "r1-plain-s0": config(False, size=10000),
        "cnn-s0": config(False, kind="baseline_cnn"),
        "cifar-s0": config(True),
        "r5-recon-s0": config(True),
    }
    table = table1(runs, configs)
    assert list(table.columns) == TABLE1_COLUMNS
    by_row = {
        (row["method"], str(row["routing"]), row["reconstruction"]): row
        for row in table.to_dict("records")
    }
    ours, paper = "test error % (ours)", "test error % (paper)"
    r3 = by_row[("CapsNet", "3", "yes")]
    assert r3["n"] == 2
    assert r3[ours] == "0.35 ± 0.071"  # 0.30 and 0.40 %: mean 0.35, sample std 0.0707
    assert r3[paper] == "0.25 ± 0.005"
    assert r3["training"] == "all 60000 images, 50 epochs"
    r1 = by_row[("CapsNet", "1", "no")]
    assert (r1["n"], r1[ours], r1["training"]) == (1, "0.50 (n=1)", "10000 images, 50 epochs")
    baseline = by_row[("baseline", "–", "–")]
    assert (baseline["n"], baseline[ours], baseline[paper]) == (1, "0.60 (n=1)", "0.39")
    empty = by_row[("CapsNet", "1", "yes")]
    assert (empty["n"], empty[ours], empty[paper]) == (0, "–", "0.29 ± 0.011")


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_no_matching_run_gives_an_empty_table(dataset: str) -> None:
    runs = per_run([("a", dataset, 2, 0, 0.01)])
    assert table1(runs, {"a": config(True)}).empty


def test_ensemble_rows_sit_beside_the_papers_cifar10_ensemble() -> None:
    table = ensemble_table(
        [
            {"dataset": "cifar10", "images": 1000, "error": 0.2, "member_errors": [0.3, 0.25]},
            {"dataset": "mnist", "images": 128, "error": 0.5, "member_errors": [0.5]},
        ]
    )
    assert list(table.columns) == ENSEMBLE_COLUMNS
    cifar, mnist = table.to_dict("records")
    assert cifar["models"] == 2 and cifar["ensemble error % (ours)"] == "20.00"
    assert cifar["members' error % (mean ± std)"] == "27.50 ± 3.54"
    assert cifar["ensemble error % (paper)"] == "10.6 (7 models)"
    assert (mnist["members' error % (mean ± std)"], mnist["ensemble error % (paper)"]) == (
        "50.00 (n=1)",
        "–",
    )
