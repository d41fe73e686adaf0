"""The report shows only measured routing diagnostics, and says where they were measured."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from capsroute.report.diagnostics import (
    DELTA_B_HEADER,
    describe_split,
    diagnostics_table,
    measured,
    reference_values,
)

LN10 = math.log(10)


def routing_frame() -> pd.DataFrame:
    """routing.csv rows of an r=1 and an r=3 run (last epoch 2), as runset loads them."""
    rows = []
    for run, r, split in (("a", 1, "val"), ("b", 3, "val")):
        for epoch in (1, 2):
            for k in range(1, r + 1):
                uniform = k == 1
                rows.append(
                    {
                        "run": run, "dataset": "mnist", "r": r, "seed": 0, "epoch": epoch,
                        "iteration": k, "delta_b": 0.1 * k,
                        "entropy": LN10 if uniform else 2.0 - 0.1 * k,
                        "max_c": 0.1 if uniform else 0.2 * k,
                        "polarised": 0.0 if uniform else 0.1,
                        "entropy_w": LN10 if uniform else 1.9 - 0.1 * k,
                        "max_c_w": 0.1 if uniform else 0.25 * k,
                        "polarised_w": 0.0 if uniform else 0.2,
                        "agreement": 0.3 * k, "agreement_w": 0.3 * k + 0.01,
                        "flip": 0.0, "split": split,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_last_delta_b_and_uniform_couplings_are_not_measurements() -> None:
    frame, reference = measured(routing_frame())
    r1 = frame[frame["run"] == "a"]
    r3 = frame[(frame["run"] == "b") & (frame["epoch"] == 2)].set_index("iteration")
    # r = 1: every coupling statistic, the agreement (a tie) and its only |Δb| are gone
    gone = ["entropy", "max_c", "polarised", "entropy_w", "agreement_w", "delta_b"]
    assert r1[gone].isna().all().all()
    assert r3["agreement_w"].tolist()[1:] == pytest.approx([0.61, 0.91])
    # r = 3: iteration 1 couplings are uniform, the |Δb| of iteration 3 is never applied
    assert math.isnan(r3.loc[1, "entropy"]) and r3.loc[2, "entropy"] == pytest.approx(1.8)
    assert r3["delta_b"].tolist()[:2] == pytest.approx([0.1, 0.2])
    assert math.isnan(r3.loc[3, "delta_b"])
    # the removed values become the reference line: ln 10 and 0.1
    assert reference_values(reference, "entropy") == {"mnist": pytest.approx(LN10)}
    assert reference_values(reference, "max_c_w") == {"mnist": pytest.approx(0.1)}


def test_diagnostics_table_at_the_last_epoch() -> None:
    table = diagnostics_table(routing_frame(), ["dataset", "r"]).set_index("r")
    assert table.loc[1, "entropy"] == "–" and table.loc[1, DELTA_B_HEADER] == "–"
    assert table.loc[1, "agreement cos (‖u‖-weighted)"] == "–"
    assert table.loc[3, "agreement cos (‖u‖-weighted)"] == "0.9100"
    assert table.loc[3, "entropy (‖u‖-weighted)"] == "1.6000"  # 1.9 - 0.3 at iteration 3
    assert table.loc[3, DELTA_B_HEADER] == "0.2000"  # iteration 2, the last applied
    assert table.loc[3, "n"] == 1


def test_the_split_is_named() -> None:
    frame = routing_frame()
    assert "on the validation split for 2 run(s)" in describe_split(frame)
    old = frame.drop(columns=["split", "entropy_w", "max_c_w", "polarised_w", "agreement_w"])
    text = describe_split(old)
    assert "on the test set for 2 run(s)" in text and "predate the |u|-weighted" in text
