"""Reading a run directory's CSV files for a report, checked: required columns, finite numbers,
accuracies in [0, 1], epochs 1..N agreeing with summary.json. A file that fails names itself in
`UnusableRunError` and the run is listed as left out."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from capsroute.run import rundir

# metrics.csv columns the report needs; the reconstruction columns may be empty (no decoder).
REQUIRED_METRICS = (
    "epoch",
    "train_loss",
    "train_eval_acc",
    "test_acc",
    "test_loss",
    "epoch_seconds",
    "images_per_s",
)


class UnusableRunError(Exception):
    """Why one run cannot be used; becomes a row of the warnings table."""

    def __init__(self, problem: str, status: str = "damaged") -> None:
        super().__init__(problem)
        self.problem, self.status = problem, status


def read_metrics(path: Path, summary: dict[str, Any]) -> pd.DataFrame:
    """metrics.csv, checked complete: every needed column numeric, epochs 1..n, n as promised."""
    frame = read_numeric_csv(path, REQUIRED_METRICS)
    check_ranges(frame, path.name)
    epochs = frame["epoch"].tolist()
    if epochs != list(range(1, len(frame) + 1)):
        raise UnusableRunError(f"{path.name} epochs are {epochs[:6]}..., not 1..{len(frame)}")
    expected = summary.get("epochs_completed")
    if expected != len(frame):
        raise UnusableRunError(f"{path.name} has {len(frame)} epochs, summary.json says {expected}")
    final = summary.get("final_test_acc")
    if not isinstance(final, int | float) or not math.isclose(
        final, frame["test_acc"].iloc[-1], rel_tol=1e-9, abs_tol=1e-12
    ):
        raise UnusableRunError(f"{path.name} last test_acc disagrees with summary.json ({final})")
    return frame


def check_ranges(frame: pd.DataFrame, name: str) -> None:
    """Every number finite; accuracies (`*_acc`) in [0, 1]; every other column >= 0."""
    for column in frame.select_dtypes("number").columns:
        values = frame[column].dropna()
        if not values.map(math.isfinite).all():
            raise UnusableRunError(f"{name} column {column} holds a non-finite number (damaged)")
        high = 1.0 if column.endswith("_acc") else math.inf
        outside = values[~values.between(0.0, high)]
        if len(outside):
            raise UnusableRunError(
                f"{name} column {column} holds {outside.iloc[0]!r}, outside [0, {high:g}] (damaged)"
            )


def read_routing(path: Path, metrics: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """routing.csv, checked to hold iterations 1..r for every epoch in metrics.csv.

    A network without routing (`model.kind=baseline_cnn`) writes no rows: an empty frame.
    """
    if config.get("model.kind", "capsnet") != "capsnet":
        return pd.DataFrame(columns=list(rundir.ROUTING_REQUIRED))
    # the last iteration's |Δb| is empty in newer runs (never applied); `split` is text
    filled = [c for c in rundir.ROUTING_REQUIRED if c != "delta_b"]
    frame = read_numeric_csv(path, rundir.ROUTING_REQUIRED, filled, text=("split",))
    r = config.get("routing.iterations")
    for epoch in metrics["epoch"]:
        rows = frame[frame["epoch"] == epoch]
        iterations = rows["iteration"].tolist()
        if iterations != list(range(1, (r or 0) + 1)):
            raise UnusableRunError(
                f"{path.name} epoch {epoch} has iterations {iterations}, r is {r}"
            )
        if rows["delta_b"].iloc[:-1].isna().any():
            raise UnusableRunError(f"{path.name} epoch {epoch} lacks a |Δb| of an applied update")
    return frame


def read_evals(path: Path, last_epoch: int) -> pd.DataFrame:
    """eval_iters.csv (or eval_cross.csv) rows measured on the run's last epoch; empty if none
    are usable.

    The file is optional and extra: a missing, damaged or stale one (the run trained on after
    it was evaluated) never makes the run itself unusable.
    """
    if not path.exists():
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return pd.DataFrame()
    if frame.empty or any(column not in frame.columns for column in rundir.EVAL_REQUIRED):
        return pd.DataFrame()
    for column in frame.columns:
        if column not in ("split", "mode", "dataset"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame.dropna(subset=list(rundir.EVAL_REQUIRED))
    frame = frame[frame["epoch"] == last_epoch].reset_index(drop=True)
    frame["eval_r"] = frame["eval_r"].astype(int)
    return frame


def read_numeric_csv(
    path: Path,
    required: Iterable[str],
    filled: Iterable[str] | None = None,
    text: Iterable[str] = (),
) -> pd.DataFrame:
    """A CSV with the `required` columns, every row holding a number in the `filled` ones
    (default: the required ones); every column but the `text` ones is read as numbers."""
    required, text = list(required), set(text)
    filled = required if filled is None else list(filled)
    if not path.exists():
        raise UnusableRunError(f"{path.name} missing")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise UnusableRunError(f"{path.name} unreadable ({type(exc).__name__})") from exc
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise UnusableRunError(f"{path.name} lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise UnusableRunError(f"{path.name} has no rows")
    for column in frame.columns:
        if column not in text:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[filled].isna().any(axis=1)
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 1
        raise UnusableRunError(
            f"{path.name} row {row} is incomplete or not numeric (truncated file?)"
        )
    for column in ("epoch", "iteration"):
        if column in frame.columns:
            frame[column] = frame[column].astype(int)
    return frame
