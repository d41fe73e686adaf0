"""One definition of a run's headline numbers: summary.json and reports read the same epochs."""

from __future__ import annotations

import math

from capsroute.run.selection import headline, headline_text, read_headline


def rows(test: list[float], val: list[float | None]) -> list[dict[str, object]]:
    return [
        {"epoch": k + 1, "test_acc": t, "train_eval_acc": 0.99, "val_acc": v}
        for k, (t, v) in enumerate(zip(test, val, strict=True))
    ]


def test_test_best_and_validation_best_epochs_have_separate_names() -> None:
    # test peaks at epoch 3, validation at epoch 2 (the first of two equal highs)
    numbers = headline(rows([0.90, 0.92, 0.95, 0.93], [0.80, 0.88, 0.85, 0.88]))
    assert numbers["best_test_acc"] == 0.95 and numbers["best_test_epoch"] == 3
    assert numbers["val_best_epoch"] == 2 and numbers["best_val_acc"] == 0.88
    assert numbers["test_acc_at_val_best"] == 0.92
    assert numbers["final_test_acc"] == 0.93
    assert math.isclose(numbers["final_test_error"], 0.07)


def test_without_validation_the_validation_numbers_are_none() -> None:
    numbers = headline(rows([0.90, 0.90], [None, float("nan")]))
    assert numbers["best_test_epoch"] == 1  # ties go to the earliest epoch
    assert numbers["val_best_epoch"] is None and numbers["test_acc_at_val_best"] is None


def test_old_summary_layouts_are_read_under_the_new_names() -> None:
    chosen_on_val = {"best_epoch": 4, "best_epoch_by": "val", "test_acc_at_best": 0.91}
    chosen_on_test = {"best_epoch": 2, "best_epoch_by": "test", "best_test_acc": 0.95}
    oldest = {"best_epoch": 5, "best_test_acc": 0.9, "final_test_acc": 0.89}
    assert read_headline(chosen_on_val)["val_best_epoch"] == 4
    assert read_headline(chosen_on_val)["test_acc_at_val_best"] == 0.91
    assert read_headline(chosen_on_val)["best_test_epoch"] is None
    assert read_headline(chosen_on_test)["best_test_epoch"] == 2
    assert read_headline(oldest)["best_test_epoch"] == 5
    assert headline_text(oldest) == "final test accuracy 89.00% (best-on-test 90.00% at epoch 5)"
    new = {**headline(rows([0.90, 0.92], [0.8, 0.7])), "status": "completed"}
    assert headline_text(new) == (
        "final test accuracy 92.00% (90.00% at epoch 1, chosen on validation)"
    )
