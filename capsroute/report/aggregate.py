"""From per-epoch rows to the numbers of the paper tables: per run, then per cell over seeds.

`per_run` reduces each run's epochs to one row (final and best accuracy, generalisation gap,
overfitting, speed). `summary_table` averages those over seeds for every dataset x swept axes
x r cell, with the sample std and a t interval. `comparison_table` pairs each r with the
smallest r of the same dataset seed by seed. All accuracies stay fractions here; formatting
to percent happens only when tables are written.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from capsroute.report.stats import Estimate, estimate, paired_difference

# Per-run quantities averaged over seeds, in table order.
RUN_METRICS = (
    "final_test_acc",
    "final_test_error",
    "best_test_acc",
    "best_epoch",
    "final_train_eval_acc",
    "gap_final",
    "gap_max",
    "overfit",
    "seconds_per_epoch",
    "images_per_s",
    "best_val_acc",
    "val_best_epoch",
    "test_acc_at_val_best",
)
METRICS_CHOICES = {"test_acc": "final_test_acc", "test_error": "final_test_error"}


def per_run(epochs: pd.DataFrame, group_columns: Sequence[str]) -> pd.DataFrame:
    """One row per run with the quantities of `RUN_METRICS`.

    best_test_acc is the maximum over epochs of the test accuracy (best-on-test: an optimistic
    number, since the epoch is chosen on the test set), best_epoch the first epoch reaching it.
    With a validation split (`val_acc` in metrics.csv), val_best_epoch is the first epoch of
    highest validation accuracy and test_acc_at_val_best the test accuracy at that epoch: an
    honest model selection. Those three are NaN for runs without a validation split.
    gap = train_eval_acc - test_acc; overfit = last test loss - lowest test loss. Speed is the
    median over epochs, so a first epoch slowed by warm-up does not dominate.
    """
    keys = ["run", *group_columns, "seed"]
    rows = [_run_row(run.sort_values("epoch"), keys) for _, run in epochs.groupby("run", sort=True)]
    if not rows:
        return pd.DataFrame(columns=[*keys, *RUN_METRICS])
    return pd.DataFrame(rows).sort_values(keys[1:], ignore_index=True)


def _run_row(frame: pd.DataFrame, keys: Sequence[str]) -> dict[str, object]:
    last = frame.iloc[-1]
    gap = frame["train_eval_acc"] - frame["test_acc"]
    best = frame.loc[frame["test_acc"].idxmax()]  # idxmax returns the first maximum
    row = {column: last[column] for column in keys}
    row.update(
        final_test_acc=last["test_acc"],
        final_test_error=1.0 - last["test_acc"],
        best_test_acc=best["test_acc"],
        best_epoch=int(best["epoch"]),
        final_train_eval_acc=last["train_eval_acc"],
        gap_final=gap.iloc[-1],
        gap_max=gap.max(),
        overfit=last["test_loss"] - frame["test_loss"].min(),
        seconds_per_epoch=frame["epoch_seconds"].median(),
        images_per_s=frame["images_per_s"].median(),
        best_val_acc=float("nan"),
        val_best_epoch=float("nan"),
        test_acc_at_val_best=float("nan"),
    )
    val = frame["val_acc"] if "val_acc" in frame.columns else None
    if val is not None and val.notna().all():
        chosen = frame.loc[val.idxmax()]  # first epoch of highest validation accuracy
        row.update(
            best_val_acc=chosen["val_acc"],
            val_best_epoch=int(chosen["epoch"]),
            test_acc_at_val_best=chosen["test_acc"],
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
    runs: pd.DataFrame, group_columns: Sequence[str], metric: str = "final_test_acc"
) -> pd.DataFrame:
    """Each r against the smallest r of its dataset (and other axes): paired by seed.

    `diff_*` describe (metric at r) - (metric at the baseline r) over the seeds both have.
    """
    outer = [column for column in group_columns if column != "r"]
    rows = []
    for key, block in runs.groupby(outer, sort=True):
        by_r = {
            r: dict(zip(cell["seed"], cell[metric], strict=True)) for r, cell in block.groupby("r")
        }
        baseline = min(by_r)
        for r in sorted(by_r):
            if r == baseline:
                continue
            diff, seeds = paired_difference(by_r[r], by_r[baseline])
            row: dict[str, object] = dict(zip(outer, _as_tuple(key), strict=True))
            row.update(r=r, baseline_r=baseline, metric=metric, n_pairs=diff.n)
            row["seeds"] = " ".join(str(seed) for seed in seeds)
            row.update(_estimate_columns("diff", diff))
            rows.append(row)
    columns = [*outer, "r", "baseline_r", "metric", "n_pairs", "seeds"]
    columns += [f"diff_{part}" for part in ("mean", "std", "ci_low", "ci_high")]
    return pd.DataFrame(rows, columns=columns)


def _as_tuple(key: object) -> tuple[object, ...]:
    return key if isinstance(key, tuple) else (key,)
