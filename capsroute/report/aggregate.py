"""From per-epoch rows to the numbers of the paper tables: per run, then per cell over seeds.

`per_run` reduces each run's epochs to one row (final and best accuracy, generalisation gap,
overfitting, speed). `summary_table` averages those over seeds for every dataset x swept axes
x r cell, with the sample std and a t interval. `comparison_table` makes the pre-declared
paired comparisons (`capsroute.report.compare`). All accuracies stay fractions here; formatting
to percent happens only when tables are written.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from capsroute.report.compare import (
    DYNAMIC,
    MODE_AXIS,
    by_seed,
    compare,
    comparison_frame,
    reference_r,
)
from capsroute.report.stats import Estimate, estimate
from capsroute.run.selection import headline

# Per-run quantities averaged over seeds, in table order.
RUN_METRICS = (
    "final_test_acc",
    "final_test_error",
    "best_test_acc",
    "best_test_epoch",
    "final_train_eval_acc",
    "gap_final",
    "gap_max",
    "overfit",
    "seconds_per_epoch",
    "images_per_s",
    "best_val_acc",
    "val_best_epoch",
    "test_acc_at_val_best",
    "epochs_run",
)
# Per-run text columns: which loss `overfit` measures ("margin", or "total" for old runs).
RUN_LABELS = ("overfit_loss",)
NAN = float("nan")
METRICS_CHOICES = {"test_acc": "final_test_acc", "test_error": "final_test_error"}


def per_run(epochs: pd.DataFrame, group_columns: Sequence[str]) -> pd.DataFrame:
    """One row per run with the quantities of `RUN_METRICS`.

    The accuracies and best epochs are `capsroute.run.selection.headline` (the one definition
    summary.json uses too): best_test_acc / best_test_epoch are best-on-test (optimistic),
    best_val_acc / val_best_epoch / test_acc_at_val_best the honest validation choice (NaN
    without a validation split). gap = train_eval_acc - test_acc. overfit = last minus lowest
    test *margin* loss (`overfit_loss` = "margin"), or of the total loss for runs recorded
    before metrics.csv had the margin column (`overfit_loss` = "total"). Speed is the median
    over epochs, so a first epoch slowed by warm-up does not dominate. epochs_run counts the
    recorded epochs (early stopping or a different train.epochs make it differ).
    """
    keys = ["run", *group_columns, "seed"]
    rows = [_run_row(run.sort_values("epoch"), keys) for _, run in epochs.groupby("run", sort=True)]
    if not rows:
        return pd.DataFrame(columns=[*keys, *RUN_METRICS, *RUN_LABELS])
    return pd.DataFrame(rows).sort_values(keys[1:], ignore_index=True)


def _run_row(frame: pd.DataFrame, keys: Sequence[str]) -> dict[str, object]:
    last = frame.iloc[-1]
    gap = frame["train_eval_acc"] - frame["test_acc"]
    row: dict[str, object] = {column: last[column] for column in keys}
    numbers = headline(frame.to_dict("records"))
    row.update({key: NAN if value is None else value for key, value in numbers.items()})
    margin = frame["test_margin_loss"] if "test_margin_loss" in frame.columns else None
    has_margin = margin is not None and bool(margin.notna().all())
    loss = margin if has_margin else frame["test_loss"]
    row.update(
        gap_final=gap.iloc[-1],
        gap_max=gap.max(),
        overfit=loss.iloc[-1] - loss.min(),
        overfit_loss="margin" if has_margin else "total",
        seconds_per_epoch=frame["epoch_seconds"].median(),
        images_per_s=frame["images_per_s"].median(),
        epochs_run=len(frame),
    )
    return row


def summary_table(runs: pd.DataFrame, group_columns: Sequence[str]) -> pd.DataFrame:
    """Per cell: n, the seeds, and mean/std/95% CI of every quantity in `RUN_METRICS`."""
    rows = []
    for key, cell in runs.groupby(list(group_columns), sort=True):
        row: dict[str, object] = dict(zip(group_columns, _as_tuple(key), strict=True))
        row["n"] = len(cell)
        row["seeds"] = " ".join(str(seed) for seed in sorted(cell["seed"]))
        for metric in RUN_METRICS:
            row.update(_estimate_columns(metric, estimate(cell[metric].tolist())))
        rows.append(row)
    return pd.DataFrame(rows)


def _estimate_columns(name: str, value: Estimate) -> dict[str, float]:
    return {
        f"{name}_mean": value.mean,
        f"{name}_std": value.std,
        f"{name}_ci_low": value.ci_low,
        f"{name}_ci_high": value.ci_high,
    }


def comparison_table(
    runs: pd.DataFrame,
    group_columns: Sequence[str],
    metric: str = "final_test_acc",
    reference: int | None = None,
) -> pd.DataFrame:
    """The pre-declared comparisons of `capsroute.report.compare`, per dataset (and other
    axes): every dynamic r against the reference r, every routing control against every
    dynamic r; paired by seed, intervals Bonferroni-adjusted within each block.

    `diff_*` describe (metric of `treated`) - (metric of `baseline`) over the seeds both have.
    """
    outer = [c for c in group_columns if c not in ("r", MODE_AXIS)]
    frames = []
    for key, block in runs.groupby(outer, sort=True):
        mode = block[MODE_AXIS].astype(str) if MODE_AXIS in block.columns else None
        dynamic = block if mode is None else block[mode == DYNAMIC]
        rs = sorted(int(r) for r in dynamic["r"].unique())
        if not rs:
            continue
        cells = {r: by_seed(dynamic[dynamic["r"] == r], metric) for r in rs}
        ref, _ = reference_r(rs, reference)
        pairs = [(f"r={r}", cells[r], f"r={ref}", cells[ref]) for r in rs if r != ref]
        if mode is not None:
            pairs += [
                (str(m), by_seed(cell, metric), f"r={r}", cells[r])
                for m, cell in block[mode != DYNAMIC].groupby(MODE_AXIS, sort=True)
                for r in rs
            ]
        if pairs:
            keys = dict(zip(outer, _as_tuple(key), strict=True))
            frames.append(comparison_frame(compare(pairs), **keys, metric=metric))
    if not frames:
        return pd.DataFrame(columns=[*outer, "treated", "baseline", "metric", "n_pairs"])
    return pd.concat(frames, ignore_index=True)


def _as_tuple(key: object) -> tuple[object, ...]:
    return key if isinstance(key, tuple) else (key,)
