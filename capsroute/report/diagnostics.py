"""Routing diagnostics as the report shows them: only values that were measured.

Two kinds of recorded value are not measurements and are removed (set to NaN) here:

- the coupling statistics (entropy, max c, polarised share, weighted or not) of an iteration
  whose couplings are uniform by construction: the first iteration of dynamic routing (and the
  `uniform` control) starts from zero logits, so c_ij = 1/J and the entropy is ln J whatever
  the network. That is the whole of r = 1, and iteration 1 of every r. The figures draw this
  constant as a dashed reference line instead of points;
- the agreement cosine at those same iterations: with every c_ij equal, "the parent i couples
  to most" is a tie, so the cosine there measures nothing (no reference line either);
- |Δb| of the last iteration, an update that is computed but never applied to a coupling
  (runs recorded before this rule kept it; newer runs leave it empty).

`describe_split` says which split the diagnostics were measured on: the validation split for
runs with `dataset.val_size` (recorded in routing.csv's `split` column), else the test set.
"""

from __future__ import annotations

import pandas as pd

from capsroute.report.compare import MODE_AXIS
from capsroute.run.rundir import WEIGHTED_DIAGNOSTICS

# Coupling statistics: constants (not measurements) where the couplings are uniform.
COUPLING_COLUMNS = ("entropy", "max_c", "polarised", "entropy_w", "max_c_w", "polarised_w")
UNIFORM_START_MODES = ("dynamic", "uniform")  # modes whose first couplings are 1/J
TIED_COLUMNS = ("agreement", "agreement_w")  # undefined where every coupling ties
# The per-cell table at the last epoch: (column, header), at the last iteration except delta_b.
TABLE_COLUMNS = (
    ("entropy", "entropy"),
    ("entropy_w", "entropy (‖u‖-weighted)"),
    ("max_c", "max c"),
    ("max_c_w", "max c (‖u‖-weighted)"),
    ("polarised", "polarised"),
    ("polarised_w", "polarised (‖u‖-weighted)"),
    ("agreement", "agreement cos"),
    ("agreement_w", "agreement cos (‖u‖-weighted)"),
)  # no "|" in headers: it would split a markdown table cell
DELTA_B_HEADER = "mean abs Δb (last applied)"


def measured(routing: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(routing rows with non-measurements set to NaN, the uniform-coupling reference values).

    The reference frame holds the removed coupling rows (dataset and the coupling columns),
    so figures can draw them as a line per dataset.
    """
    frame = routing.copy()
    if frame.empty:
        return frame, frame
    r = frame.groupby("run")["iteration"].transform("max")
    frame.loc[frame["iteration"] == r, "delta_b"] = float("nan")  # never applied
    mode = frame[MODE_AXIS] if MODE_AXIS in frame.columns else pd.Series("dynamic", frame.index)
    uniform = (frame["iteration"] == 1) & mode.astype(str).isin(UNIFORM_START_MODES)
    columns = [c for c in COUPLING_COLUMNS if c in frame.columns]
    reference = frame.loc[uniform, ["dataset", *columns]].copy()
    tied = [c for c in TIED_COLUMNS if c in frame.columns]
    frame.loc[uniform, [*columns, *tied]] = float("nan")
    return frame, reference


def reference_values(reference: pd.DataFrame, column: str) -> dict[str, float]:
    """Per dataset, the constant a coupling column takes with uniform couplings (median)."""
    if reference.empty or column not in reference.columns:
        return {}
    values = reference.dropna(subset=[column]).groupby("dataset")[column].median()
    return {str(k): float(v) for k, v in values.items()}


def describe_split(routing: pd.DataFrame) -> str:
    """Which split the diagnostics come from, as a sentence ('' without routing rows)."""
    if routing.empty:
        return ""
    recorded = routing["split"] if "split" in routing.columns else pd.Series("", routing.index)
    split = recorded.map(lambda value: "val" if value == "val" else "test")
    per_run = split.groupby(routing["run"]).first()
    val, test = int((per_run == "val").sum()), int((per_run != "val").sum())
    where = []
    if val:
        where.append(f"on the validation split for {val} run(s)")
    if test:
        where.append(
            f"on the test set for {test} run(s) (no validation split, or recorded before "
            "diagnostics moved to it)"
        )
    weighted = all(c in routing.columns for c in WEIGHTED_DIAGNOSTICS)
    note = (
        " The |u|-weighted versions weight each lower capsule by its length |u_i|; the "
        "agreement is the cosine between û_j|i and v_j for the parent j that i couples to most."
        if weighted
        else " These runs predate the |u|-weighted and agreement diagnostics."
    )
    return (
        "Routing diagnostics are measured "
        + " and ".join(where)
        + "; coupling statistics where the couplings are uniform by construction (iteration 1,"
        " so all of r = 1) are drawn as a dashed reference line, not as measurements, the"
        " agreement there (a tie between parents) is omitted, and the |Δb| of the last"
        " iteration (never applied) is dropped." + note
    )


def diagnostics_table(routing: pd.DataFrame, group_columns: list[str]) -> pd.DataFrame:
    """Per cell, mean over seeds at the last epoch: the coupling statistics and agreement at
    the last iteration, and |Δb| of the last applied iteration; '–' where not measured."""
    if routing.empty:
        return pd.DataFrame()
    frame, _ = measured(routing)
    last_epoch = frame.groupby("run")["epoch"].transform("max")
    frame = frame[frame["epoch"] == last_epoch]
    r = frame.groupby("run")["iteration"].transform("max")
    final = frame[frame["iteration"] == r]
    applied = frame[frame["iteration"] == r - 1][["run", "delta_b"]]
    final = final.drop(columns="delta_b").merge(applied, on="run", how="left")
    columns = [(c, h) for c, h in TABLE_COLUMNS if c in final.columns]
    rows = []
    for key, cell in final.groupby(group_columns, sort=True, dropna=False):
        values = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(group_columns, values, strict=True))
        row["n"] = cell["run"].nunique()
        for column, header in [*columns, ("delta_b", DELTA_B_HEADER)]:
            mean = cell[column].mean()
            row[header] = "–" if pd.isna(mean) else f"{mean:.4f}"
        rows.append(row)
    return pd.DataFrame(rows)
