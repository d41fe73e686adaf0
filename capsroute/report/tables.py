"""The report's tables as text: what `capsroute report` shows, before any file format.

`Report` is what a report computed (`capsroute.report.build.make_report`); the `*_display`
functions turn its numbers into text cells (percent, mean ± std, intervals) that the writers
(`capsroute.report.write`) and the terminal (`capsroute.report.build.print_report`) share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from capsroute.report import robustness
from capsroute.report.compare import MODE_AXIS
from capsroute.report.runset import RunSet

PM = " ± "
OVERFIT_HEADER = "overfit (margin test-loss rise)"
TOTAL_LOSS_MARK = " (total loss)"  # runs recorded before the margin-only test loss existed
COMPARISON_TITLE = "Pre-declared comparisons (paired by seed, Bonferroni-adjusted intervals)"
DIAGNOSTICS_TITLE = "Routing diagnostics at the last epoch (mean over seeds)"
EVAL_TITLE = "Accuracy (%) by training r and evaluation r (capsroute evaluate)"
TABLE1_TITLE = "Sabour et al. (2017), Table 1: MNIST test error (%), ours beside the paper's"
ENSEMBLE_TITLE = "Ensembles: test error (%) of the averaged class-capsule lengths"
SECTION7_TITLE = (
    "Sabour et al. (2017), Section 7: smallNORB and SVHN test error (%), ours beside the paper's"
)


@dataclass
class Report:
    """What a report computed and where it wrote it."""

    out_dir: Path
    runset: RunSet
    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: pd.DataFrame
    findings: list[str]
    metric: str
    files: list[Path] = field(default_factory=list)
    # the paper's own tables beside ours (capsroute.paper); empty when nothing matches
    paper_table1: pd.DataFrame = field(default_factory=pd.DataFrame)
    ensembles: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    paper_section7: pd.DataFrame = field(default_factory=pd.DataFrame)  # smallNORB, SVHN
    # Section 5.2: per run, own test vs another test set (capsroute.report.robustness)
    robustness: pd.DataFrame = field(default_factory=pd.DataFrame)


def _num(value: float, digits: int, scale: float = 1.0) -> str:
    return "–" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _mean_std(row: pd.Series, name: str, digits: int, scale: float = 1.0) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if math.isnan(std):
        return _num(mean, digits, scale)
    return f"{_num(mean, digits, scale)}{PM}{_num(std, digits, scale)}"


def _ci(row: pd.Series, name: str, digits: int, scale: float = 1.0) -> str:
    low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if math.isnan(low):
        return "–"
    return f"[{_num(low, digits, scale)}, {_num(high, digits, scale)}]"


SUMMARY_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("test acc %", lambda r: _mean_std(r, "final_test_acc", 2, 100)),
    ("test acc 95% CI", lambda r: _ci(r, "final_test_acc", 2, 100)),
    ("test error %", lambda r: _mean_std(r, "final_test_error", 2, 100)),
    ("test error 95% CI", lambda r: _ci(r, "final_test_error", 2, 100)),
    ("best-on-test acc %", lambda r: _mean_std(r, "best_test_acc", 2, 100)),
    ("best-on-test epoch", lambda r: _mean_std(r, "best_test_epoch", 1)),
    ("train-eval acc %", lambda r: _mean_std(r, "final_train_eval_acc", 2, 100)),
    ("gap end (pts)", lambda r: _mean_std(r, "gap_final", 2, 100)),
    ("gap max (pts)", lambda r: _mean_std(r, "gap_max", 2, 100)),
    (OVERFIT_HEADER, lambda r: _mean_std(r, "overfit", 4)),
    ("s/epoch", lambda r: _mean_std(r, "seconds_per_epoch", 2)),
    ("images/s", lambda r: _mean_std(r, "images_per_s", 0)),
]
# With a validation split: the epoch is chosen on validation, and the test accuracy there.
VAL_COLUMNS: list[tuple[str, Callable[[pd.Series], str]]] = [
    ("test acc at best-val epoch %", lambda r: _mean_std(r, "test_acc_at_val_best", 2, 100)),
    ("best-val epoch", lambda r: _mean_std(r, "val_best_epoch", 1)),
    ("best val acc %", lambda r: _mean_std(r, "best_val_acc", 2, 100)),
]
# Terminal: the headline columns under short names, so the table fits a normal window.
TERMINAL_COLUMNS = {
    "test acc %": "test acc %",
    "test acc 95% CI": "95% CI",
    "best-on-test acc %": "best-on-test %",
    "best-on-test epoch": "best ep.",
    "gap end (pts)": "gap end",
    "gap max (pts)": "gap max",
    OVERFIT_HEADER: "overfit",
    "s/epoch": "s/epoch",
    "images/s": "img/s",
}


def has_validation(report: Report) -> bool:
    """Whether any run chose its best epoch on a validation split (dataset.val_size)."""
    return bool(report.runs["val_best_epoch"].notna().any())


def summary_columns(report: Report) -> list[tuple[str, Callable[[pd.Series], str]]]:
    """Final-epoch numbers first; then validation-selected ones when runs have a val split."""
    if not has_validation(report):
        return SUMMARY_COLUMNS
    best_on_test = [i for i, (name, _) in enumerate(SUMMARY_COLUMNS) if name.startswith("best")]
    at = best_on_test[0] if best_on_test else len(SUMMARY_COLUMNS)
    return [*SUMMARY_COLUMNS[:at], *VAL_COLUMNS, *SUMMARY_COLUMNS[at:]]


def summary_display(report: Report) -> pd.DataFrame:
    """The summary table as text cells: percent, mean ± std, [CI low, CI high]."""
    keys = [*report.runset.group_columns, "n"]
    columns = summary_columns(report)
    total = total_loss_cells(report)
    rows = []
    for _, row in report.summary.iterrows():
        cells = {name: cell(row) for name, cell in columns}
        if tuple(row[k] for k in report.runset.group_columns) in total:
            cells[OVERFIT_HEADER] += TOTAL_LOSS_MARK
        rows.append({**{k: row[k] for k in keys}, **cells})
    return pd.DataFrame(rows, columns=[*keys, *(name for name, _ in columns)])


def total_loss_cells(report: Report) -> set[tuple[object, ...]]:
    """Cells with a run whose overfitting number uses the total test loss (recorded before
    metrics.csv had the margin-only column)."""
    keys = report.runset.group_columns
    old = report.runs[report.runs["overfit_loss"] == "total"]
    return {tuple(row) for row in old[keys].itertuples(index=False)}


def eval_split(evals: pd.DataFrame) -> str:
    """The split the evaluation table and figures show: `test` when measured, else the first."""
    splits = sorted(evals["split"].unique())
    return "test" if "test" in splits else splits[0]


def eval_display(report: Report) -> pd.DataFrame:
    """`capsroute evaluate` accuracy (%) by training cell (rows) and evaluation r (columns).

    Mean over seeds on one split (test when measured), dynamic routing at each evaluation r;
    a run trained with a control (uniform/random) adds a column for its own mode.
    """
    evals = report.runset.evals
    if evals.empty:
        return pd.DataFrame()
    split = eval_split(evals)
    frame = evals[evals["split"] == split].copy()
    frame["column"] = [
        f"eval r={r}" if mode == "dynamic" else f"own {mode}"
        for r, mode in zip(frame["eval_r"], frame["mode"], strict=True)
    ]
    keys = report.runset.group_columns
    table = frame.pivot_table(index=keys, columns="column", values="accuracy", aggfunc="mean")
    order = sorted(table.columns, key=lambda c: (not c.startswith("eval"), len(c), c))
    table = (100 * table[order]).round(2).reset_index()
    seeds = frame.groupby(keys)["run"].nunique().rename("n").reset_index()
    table = table.merge(seeds, on=keys)
    table.insert(len(keys), "split", split)
    return table[[*keys, "split", "n", *order]].astype(object).fillna("–")


def comparison_display(report: Report) -> pd.DataFrame:
    """The pre-declared comparisons: paired difference of the metric in points, with the
    Bonferroni-adjusted interval (its level shown) and the adjusted p-value."""
    outer = [c for c in report.runset.group_columns if c not in ("r", MODE_AXIS)]
    what = "test acc" if report.metric == "final_test_acc" else "test error"
    rows = [
        {
            **{k: row[k] for k in outer},
            "comparison": f"{row['treated']} − {row['baseline']}",
            "paired seeds": row["n_pairs"],
            f"Δ {what} (pts)": _mean_std(row, "diff", 2, 100),
            "adjusted CI": _ci(row, "diff", 2, 100),
            "CI level": f"{100 * row['interval_level']:.2f}%",
            "p (adjusted)": _num(row["p_adjusted"], 3),
        }
        for _, row in report.comparison.iterrows()
    ]
    columns = [*outer, "comparison", "paired seeds", f"Δ {what} (pts)", "adjusted CI"]
    return pd.DataFrame(rows, columns=[*columns, "CI level", "p (adjusted)"])


def paper_sections(report: Report) -> list[tuple[str, pd.DataFrame]]:
    """The paper-layout tables that have data: (title, display frame)."""
    sections = [
        (TABLE1_TITLE, report.paper_table1),
        (SECTION7_TITLE, report.paper_section7),
        (robustness.TITLE, robustness.robustness_table(report.robustness)),
        (ENSEMBLE_TITLE, report.ensembles),
    ]
    return [(title, frame) for title, frame in sections if not frame.empty]
