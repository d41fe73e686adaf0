"""The report on study runs: routing controls and switches as axes, eval-r results, validation.

Run directories are written with known numbers (tests/report_fixtures.py), plus the files
`capsroute evaluate` adds (eval_iters.csv) and the val_acc/val_loss columns of runs trained
with `dataset.val_size`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capsroute import io as capsroute_io
from capsroute.report.build import eval_display, make_report, summary_display
from capsroute.run.rundir import EVAL_COLUMNS, EVAL_ITERS_FILE, METRICS_COLUMNS
from tests.report.fixtures import metrics_rows, run_config, write_run

# (mode, r) -> final test accuracy per seed 0, 1 (2 epochs; epoch 1 is 0.05 lower)
CONTROLS = {
    ("dynamic", 1): (0.90, 0.91),
    ("dynamic", 3): (0.93, 0.95),
    ("uniform", 1): (0.89, 0.90),
    ("random", 1): (0.80, 0.82),
}


def write_controls(root: Path) -> Path:
    for (mode, r), finals in CONTROLS.items():
        for seed, final in enumerate(finals):
            config = run_config("mnist", r, seed, 2, **{"routing.mode": mode})
            metrics = metrics_rows([final - 0.05, final], [0.95, 0.99], [0.3, 0.2])
            write_run(root / "mnist" / f"r{r}" / f"s{seed}" / f"mode={mode}", config, metrics)
    return root


def test_routing_controls_are_an_axis_with_readable_labels_and_a_finding(tmp_path: Path) -> None:
    report = make_report([write_controls(tmp_path / "sweep")], formats=["md"])
    assert report.runset.axes == ["routing.mode"]
    cells = report.summary[["routing.mode", "r", "n"]].values.tolist()
    assert cells == [["dynamic", 1, 2], ["dynamic", 3, 2], ["random", 1, 2], ["uniform", 1, 2]]
    text = "\n".join(report.findings)
    # dynamic r=3: 94.00 ± 1.41; uniform 89.50 ± 0.71; random 81.00 ± 1.41
    assert "r=1: 90.50% ± 0.71, r=3: 94.00% ± 1.41; random: 81.00% ± 1.41; uniform: 89.50%" in text
    # no validation split: no best r; r=1 vs r=3 and each control vs each dynamic r (5)
    assert "no r is named best" in text and "has the highest" not in text
    assert "Bonferroni-adjusted for 5 comparisons (each at 99.00%)" in text
    assert "uniform − r=3: -4.50 points" in text and "random − r=1: -9.50 points" in text
    assert "(routing=uniform)" not in text  # a control is compared, not given its own block
    assert "routing.mode" in (report.out_dir / "summary.md").read_text()


def test_digit_bias_and_gradient_switch_sweep_as_axes(tmp_path: Path) -> None:
    for bias in (False, True):
        for grad in ("all", "last"):
            for r in (1, 3):
                config = run_config(
                    "mnist", r, 0, 2, **{"model.digit_bias": bias, "routing.grad": grad}
                )
                metrics = metrics_rows([0.8, 0.9 + 0.01 * r], [0.9, 0.95], [0.3, 0.2])
                write_run(tmp_path / f"{bias}-{grad}-r{r}", config, metrics)
    report = make_report([tmp_path])
    assert report.runset.axes == ["model.digit_bias", "routing.grad"]
    assert len(report.summary) == 8 and len(report.comparison) == 4
    text = "\n".join(report.findings)
    assert "On mnist (digit bias=on, routing grad=last), not every run has a validation" in text
    assert (report.out_dir / "figures" / "test_acc_vs_r.png").stat().st_size > 0


def eval_rows(train_r: int, seed: int) -> list[dict[str, object]]:
    """eval_iters.csv rows: accuracy peaks at the training r, 0.9 + 0.01 * r there."""
    peak = 0.9 + 0.01 * train_r + 0.002 * seed
    return [
        {
            "epoch": 2, "split": "test", "mode": "dynamic", "train_r": train_r, "eval_r": e,
            "images": 100, "accuracy": peak - 0.02 * abs(e - train_r),
            "loss": 0.1, "margin_loss": 0.1, "recon_loss": 0.0, "entropy": 2.0, "max_c": 0.2,
            "polarised": 0.0, "flip_first": 0.0, "recorded_acc": None, "seconds": 0.1,
        }
        for e in (1, 2, 3, 5)
    ]  # fmt: skip


def test_eval_r_results_give_a_heat_map_lines_a_table_and_a_finding(tmp_path: Path) -> None:
    for r in (1, 3):
        for seed in (0, 1):
            run = tmp_path / f"r{r}" / f"s{seed}"
            metrics = metrics_rows([0.8, 0.9 + 0.01 * r], [0.9, 0.95], [0.3, 0.2])
            write_run(run, run_config("mnist", r, seed, 2), metrics)
            capsroute_io.write_csv(run / EVAL_ITERS_FILE, eval_rows(r, seed), EVAL_COLUMNS)
    report = make_report([tmp_path])
    figures = {path.name for path in report.files if path.suffix == ".png"}
    assert {"eval_r_heatmap.png", "acc_vs_eval_r.png"} <= figures
    table = eval_display(report)
    assert table.columns.tolist()[:4] == ["dataset", "r", "split", "n"]
    # trained r=3, evaluated at r=1: 0.93 - 0.04 + 0.001 (mean of seeds) = 89.1%
    row = table[table["r"] == 3].iloc[0]
    assert row["eval r=1"] == pytest.approx(89.1) and row["eval r=3"] == pytest.approx(93.1)
    text = "\n".join(report.findings)
    # no validation rows: the test accuracies, and no evaluation r named best
    assert "no evaluation r is named best" in text
    assert "trained r=3: test r=1: 89.10%, r=2: 91.10%, r=3: 93.10%, r=5: 89.10%" in text
    assert "evaluation r" in (report.out_dir / "report.md").read_text()


def test_stale_eval_rows_from_an_earlier_epoch_are_ignored(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run, run_config("mnist", 3, 0, 2), metrics_rows([0.8, 0.9], [0.9, 0.95], [0.3, 0.2]))
    stale = [{**row, "epoch": 1} for row in eval_rows(3, 0)]
    capsroute_io.write_csv(run / EVAL_ITERS_FILE, stale, EVAL_COLUMNS)
    report = make_report([run], formats=["md"])
    assert report.runset.evals.empty


def test_validation_selected_epoch_is_reported_next_to_final_numbers(tmp_path: Path) -> None:
    assert "val_acc" in METRICS_COLUMNS and "val_loss" in METRICS_COLUMNS
    for seed, (val, test) in enumerate(
        [([0.90, 0.95, 0.93], [0.88, 0.92, 0.94]), ([0.91, 0.92, 0.96], [0.89, 0.93, 0.90])]
    ):
        metrics = metrics_rows(test, [0.9, 0.95, 0.99], [0.3, 0.2, 0.25])
        for row, value in zip(metrics, val, strict=True):
            row.update(val_acc=value, val_loss=0.2)
        config = run_config("mnist", 3, seed, 3, **{"dataset.val_size": 100})
        write_run(tmp_path / f"s{seed}", config, metrics)
    report = make_report([tmp_path], formats=["md"])
    # seed 0 picks epoch 2 (test 0.92), seed 1 epoch 3 (test 0.90): mean 0.91
    runs = report.runs.sort_values("seed")
    assert runs["val_best_epoch"].tolist() == [2, 3]
    assert runs["test_acc_at_val_best"].tolist() == pytest.approx([0.92, 0.90])
    display = summary_display(report)
    columns = display.columns.tolist()
    assert columns.index("test acc %") < columns.index("test acc at best-val epoch %")
    assert columns.index("test acc at best-val epoch %") < columns.index("best-on-test acc %")
    assert display.iloc[0]["test acc at best-val epoch %"] == "91.00 ± 1.41"
    assert any("best-val epoch' chooses the epoch on the validation" in f for f in report.findings)


def test_evaluation_r_is_chosen_on_validation_and_reported_on_test(tmp_path: Path) -> None:
    """Validation prefers eval r=5 (trained r=3), the test set eval r=3: the finding names r=5
    with its test accuracy, never the test set's best."""
    run = tmp_path / "r3" / "s0"
    write_run(run, run_config("mnist", 3, 0, 2), metrics_rows([0.8, 0.9], [0.9, 0.95], [0.3, 0.2]))
    test = eval_rows(3, 0)  # test peaks at eval r=3 (93.0%); eval r=5: 89.0%
    val = [{**row, "split": "val", "accuracy": 0.9 + 0.01 * int(row["eval_r"])} for row in test]
    capsroute_io.write_csv(run / EVAL_ITERS_FILE, [*test, *val], EVAL_COLUMNS)
    report = make_report([tmp_path], formats=["md"])
    text = "\n".join(report.findings)
    assert "trained r=3: eval r=5 chosen on validation (95.00%; test 89.00%)" in text
