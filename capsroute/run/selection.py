"""A run's headline numbers from its per-epoch rows, defined once for `summary.json` and reports.

Two different "best" epochs exist and each has its own name, never a shared one:

- `best_test_epoch` / `best_test_acc`: the first epoch of highest *test* accuracy. Chosen on
  the test set, so `best_test_acc` is optimistic (best-on-test); kept because papers quote it.
- `val_best_epoch` / `best_val_acc` / `test_acc_at_val_best`: the first epoch of highest
  *validation* accuracy and the test accuracy there: an honest held-out choice. None for runs
  without a validation split (`dataset.val_size`).

`summary.json` files written before these names existed used `best_epoch` (the validation
choice when `best_epoch_by` is "val", else the test choice) and `test_acc_at_best`;
`read_headline` reads both layouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Every key `headline` returns, in summary.json order.
HEADLINE_KEYS = (
    "final_test_acc",
    "final_test_error",
    "final_train_eval_acc",
    "best_test_acc",
    "best_test_epoch",
    "best_val_acc",
    "val_best_epoch",
    "test_acc_at_val_best",
)


def _present(value: Any) -> bool:
    """A recorded number: not None (CSV/JSON) and not NaN (pandas)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def first_best(rows: Sequence[Mapping[str, Any]], column: str) -> Mapping[str, Any]:
    """The first row with the highest `column` (ties go to the earliest epoch)."""
    return max(enumerate(rows), key=lambda item: (item[1][column], -item[0]))[1]


def headline(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `HEADLINE_KEYS` of a run from its metrics rows (epoch order, at least one).

    The validation keys are None unless every row has a `val_acc`.
    """
    last = rows[-1]
    best = first_best(rows, "test_acc")
    out: dict[str, Any] = {
        "final_test_acc": last["test_acc"],
        "final_test_error": 1.0 - last["test_acc"],
        "final_train_eval_acc": last["train_eval_acc"],
        "best_test_acc": best["test_acc"],
        "best_test_epoch": int(best["epoch"]),
        "best_val_acc": None,
        "val_best_epoch": None,
        "test_acc_at_val_best": None,
    }
    if all(_present(row.get("val_acc")) for row in rows):
        chosen = first_best(rows, "val_acc")
        out.update(
            best_val_acc=chosen["val_acc"],
            val_best_epoch=int(chosen["epoch"]),
            test_acc_at_val_best=chosen["test_acc"],
        )
    return out


def read_headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The `HEADLINE_KEYS` of a `summary.json`, new layout or old (`best_epoch`,
    `best_epoch_by`, `test_acc_at_best`); a key the file cannot give is None."""
    out = {key: summary.get(key) for key in HEADLINE_KEYS}
    if "best_test_epoch" not in summary and "best_epoch" in summary:
        if summary.get("best_epoch_by") == "val":
            out["val_best_epoch"] = summary["best_epoch"]
            out["test_acc_at_val_best"] = summary.get("test_acc_at_best")
        else:  # "test", or written before validation splits existed
            out["best_test_epoch"] = summary["best_epoch"]
    return out


def headline_text(summary: Mapping[str, Any]) -> str:
    """One log line of a run's headline numbers, the validation choice when there is one."""
    numbers = read_headline(summary)
    final = numbers["final_test_acc"]
    text = f"final test accuracy {100 * final:.2f}%" if _present(final) else "no epoch finished"
    if _present(numbers["test_acc_at_val_best"]):
        return (
            f"{text} ({100 * numbers['test_acc_at_val_best']:.2f}% at epoch "
            f"{numbers['val_best_epoch']}, chosen on validation)"
        )
    if _present(numbers["best_test_acc"]):
        return (
            f"{text} (best-on-test {100 * numbers['best_test_acc']:.2f}% at epoch "
            f"{numbers['best_test_epoch']})"
        )
    return text
