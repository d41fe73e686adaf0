"""Section 7's smallNORB and SVHN numbers beside our runs (`capsroute report`)."""

from __future__ import annotations

import pandas as pd

from capsroute.report.paper_datasets import SECTION7_COLUMNS, section7_table


def runs_frame(rows: list[tuple[str, str, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["run", "dataset", "r", "seed", "final_test_error"])


def test_section7_rows_put_the_papers_number_beside_our_r3_runs() -> None:
    runs = runs_frame(
        [
            ("n3s0", "smallnorb", 3, 0, 0.030),
            ("n3s1", "smallnorb", 3, 1, 0.040),
            ("n1s0", "smallnorb", 1, 0, 0.050),
            ("s3s0", "svhn", 3, 0, 0.060),
            ("m3s0", "mnist", 3, 0, 0.010),  # no Section 7 number: not here
            ("b3s0", "svhn", 3, 1, 0.200),  # the baseline CNN: not a CapsNet row
        ]
    )
    configs = {
        "n3s0": {"train.epochs": 5, "dataset.train_size": None},
        "n3s1": {"train.epochs": 5, "dataset.train_size": None},
        "n1s0": {"train.epochs": 5, "dataset.train_size": 1000},
        "s3s0": {"train.epochs": 2},
        "b3s0": {"model.kind": "baseline_cnn"},
    }
    table = section7_table(runs, configs)
    assert list(table.columns) == SECTION7_COLUMNS
    rows = table.to_dict("records")
    assert [(row["dataset"], row["routing"], row["n"]) for row in rows] == [
        ("smallnorb", 1, 1),
        ("smallnorb", 3, 2),
        ("svhn", 3, 1),
    ]
    assert rows[1]["test error % (ours)"] == "3.50 ± 0.707"
    assert [row["test error % (paper)"] for row in rows] == ["–", "2.7", "4.3"]
    assert rows[0]["training"] == "1000 images, 5 epochs"
    assert rows[1]["training"] == "all images, 5 epochs"
    assert rows[2]["test error % (ours)"] == "6.00 (n=1)"


def test_no_section7_runs_give_an_empty_table() -> None:
    runs = runs_frame([("m3s0", "mnist", 3, 0, 0.01)])
    assert section7_table(runs, {}).empty
    assert section7_table(runs.iloc[:0], {}).empty
