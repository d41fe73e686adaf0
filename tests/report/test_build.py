"""`capsroute report` on run directories with known numbers: aggregates, warnings, findings.

Expected values are worked out by hand from the per-epoch lists below (the comments show the
arithmetic); t factors come from a printed t table (df=2: 4.303).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from capsroute.errors import ConfigError
from capsroute.report.build import NoRunsError, Report, make_report
from capsroute.report.runset import load_runs
from capsroute.report.stats import t_quantile
from capsroute.run import rundir
from tests.report.fixtures import metrics_rows, run_config, write_run

T_DF2 = 4.303  # two-sided 95%, 2 degrees of freedom (3 seeds)
SQRT3 = math.sqrt(3)

# (r, seed) -> test_acc, train_eval_acc, test_loss per epoch (3 epochs)
KNOWN = {
    (1, 0): ([0.80, 0.90, 0.88], [0.81, 0.93, 0.95], [0.30, 0.20, 0.26]),
    (1, 1): ([0.82, 0.91, 0.90], [0.84, 0.96, 0.94], [0.28, 0.21, 0.22]),
    (1, 2): ([0.85, 0.92, 0.92], [0.85, 0.95, 0.97], [0.27, 0.19, 0.20]),
    (3, 0): ([0.85, 0.91, 0.91], [0.86, 0.95, 0.99], [0.25, 0.18, 0.24]),
    (3, 1): ([0.94, 0.94, 0.94], [0.95, 0.97, 0.99], [0.20, 0.16, 0.19]),
    (3, 2): ([0.88, 0.93, 0.94], [0.90, 0.96, 1.00], [0.22, 0.17, 0.17]),
}


def write_known_sweep(root: Path) -> Path:
    """The KNOWN runs in the sweep layout <dataset>/r<r>/s<seed>/."""
    for (r, seed), (test_acc, train_eval, test_loss) in KNOWN.items():
        metrics = metrics_rows(
            test_acc, train_eval, test_loss,
            epoch_seconds=[2.0, 1.0, 1.2], images_per_s=[500.0, 1000.0, 800.0],
        )  # fmt: skip
        write_run(root / "mnist" / f"r{r}" / f"s{seed}", run_config("mnist", r, seed, 3), metrics)
    return root


@pytest.fixture(scope="module")
def known_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """One report over the KNOWN sweep, shared by the read-only tests below."""
    return make_report([write_known_sweep(tmp_path_factory.mktemp("known") / "sweep")])


def cell(summary: pd.DataFrame, r: int) -> pd.Series:
    rows = summary[summary["r"] == r]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.mark.parametrize(
    ("df", "level", "table"),
    [(1, 0.95, 12.706), (2, 0.95, 4.303), (3, 0.95, 3.182), (4, 0.95, 2.776), (9, 0.95, 2.262),
     (29, 0.95, 2.045), (100, 0.95, 1.984), (2, 0.99, 9.925), (10, 0.90, 1.812)],
)  # fmt: skip
def test_t_quantile_matches_the_printed_table(df: int, level: float, table: float) -> None:
    assert round(t_quantile(level, df), 3) == table


def test_final_accuracy_mean_std_and_t_interval(known_report: Report) -> None:
    one, three = cell(known_report.summary, 1), cell(known_report.summary, 3)
    assert one["n"] == three["n"] == 3
    assert one["seeds"] == "0 1 2"
    # r=1 finals 0.88, 0.90, 0.92: mean 0.90, std 0.02
    assert one["final_test_acc_mean"] == pytest.approx(0.90, abs=1e-12)
    assert one["final_test_acc_std"] == pytest.approx(0.02, abs=1e-12)
    half = T_DF2 * 0.02 / SQRT3
    assert one["final_test_acc_ci_low"] == pytest.approx(0.90 - half, abs=1e-5)
    assert one["final_test_acc_ci_high"] == pytest.approx(0.90 + half, abs=1e-5)
    assert one["final_test_error_mean"] == pytest.approx(0.10, abs=1e-12)
    assert one["final_test_error_std"] == pytest.approx(0.02, abs=1e-12)
    # r=3 finals 0.91, 0.94, 0.94: mean 0.93, std sqrt((0.02² + 0.01² + 0.01²) / 2)
    assert three["final_test_acc_mean"] == pytest.approx(0.93, abs=1e-12)
    assert three["final_test_acc_std"] == pytest.approx(math.sqrt(0.0003), abs=1e-12)


def test_best_epoch_gap_and_overfitting_per_run(known_report: Report) -> None:
    runs = known_report.runs.set_index(["r", "seed"])
    # r=1 s2: 0.92 reached at epochs 2 and 3 -> the first; r=3 s1: flat 0.94 -> epoch 1
    assert runs.loc[(1, 2), "best_test_epoch"] == 2
    assert runs.loc[(3, 1), "best_test_epoch"] == 1
    assert runs.loc[(3, 2), "best_test_epoch"] == 3
    assert runs.loc[(1, 0), "best_test_acc"] == pytest.approx(0.90)
    # r=1 s1: gaps 0.02, 0.05, 0.04 -> end 0.04, max 0.05
    assert runs.loc[(1, 1), "gap_final"] == pytest.approx(0.04, abs=1e-12)
    assert runs.loc[(1, 1), "gap_max"] == pytest.approx(0.05, abs=1e-12)
    # r=1 s0: margin test loss (0.9 x test loss in the fixture) 0.27, 0.18, 0.234 -> rose 0.054
    assert runs.loc[(1, 0), "overfit"] == pytest.approx(0.054, abs=1e-12)
    assert runs.loc[(1, 0), "overfit_loss"] == "margin"
    assert runs.loc[(3, 2), "overfit"] == pytest.approx(0.0, abs=1e-12)
    # speed: medians of 2.0, 1.0, 1.2 s and 500, 1000, 800 images/s
    assert runs.loc[(1, 0), "seconds_per_epoch"] == pytest.approx(1.2)
    assert runs.loc[(1, 0), "images_per_s"] == pytest.approx(800.0)


def test_cell_means_of_best_gap_and_overfit(known_report: Report) -> None:
    one, three = cell(known_report.summary, 1), cell(known_report.summary, 3)
    assert one["best_test_acc_mean"] == pytest.approx(0.91, abs=1e-12)  # 0.90, 0.91, 0.92
    assert one["best_test_epoch_mean"] == 2 and one["best_test_epoch_std"] == 0
    assert three["best_test_epoch_mean"] == 2 and three["best_test_epoch_std"] == pytest.approx(1.0)
    # r=1 end gaps 0.07, 0.04, 0.05; max gaps 0.07, 0.05, 0.05
    assert one["gap_final_mean"] == pytest.approx(0.16 / 3, abs=1e-12)
    assert one["gap_max_mean"] == pytest.approx(0.17 / 3, abs=1e-12)
    assert one["final_train_eval_acc_mean"] == pytest.approx((0.95 + 0.94 + 0.97) / 3)
    # r=3 margin test-loss rises 0.9 x (0.06, 0.03, 0.00): mean 0.027, std 0.027
    assert three["overfit_mean"] == pytest.approx(0.027, abs=1e-12)
    assert three["overfit_std"] == pytest.approx(0.027, abs=1e-12)
    assert three["seconds_per_epoch_mean"] == pytest.approx(1.2)


def test_paired_difference_to_the_reference_r(known_report: Report) -> None:
    comparison = known_report.comparison
    assert len(comparison) == 1  # one comparison: no adjustment, a plain 95% interval
    row = comparison.iloc[0]
    assert (row["treated"], row["baseline"], row["n_pairs"]) == ("r=1", "r=3", 3)
    # per seed: 0.88-0.91, 0.90-0.94, 0.92-0.94 = -0.03, -0.04, -0.02 -> mean -0.03, std 0.01
    assert row["diff_mean"] == pytest.approx(-0.03, abs=1e-12)
    assert row["diff_std"] == pytest.approx(0.01, abs=1e-12)
    half = T_DF2 * 0.01 / SQRT3
    assert row["diff_ci_low"] == pytest.approx(-0.03 - half, abs=1e-5)
    assert row["diff_ci_high"] == pytest.approx(-0.03 + half, abs=1e-5)
    assert row["interval_level"] == pytest.approx(0.95)


def test_findings_state_the_numbers(known_report: Report) -> None:
    text = "\n".join(known_report.findings)
    # the two claims open the findings
    assert known_report.findings[1].startswith("Claim 'r = 3 is the right choice' on mnist: ")
    # end gaps: r=1 mean 5.33, r=3 (0.08, 0.05, 0.06) mean 6.33; +1 point in every seed
    assert "gap (train-eval minus test accuracy) is 5.33, 6.33 points" in text
    # the same +1 point in every seed: a zero-width interval decides nothing
    assert "gap r=3 − r=1: +1.00 points in each of n=3 seeds (no spread to judge" in text
    assert known_report.findings[0].startswith(
        "Claim 'more routing iterations overfit' on mnist: cannot tell with n = 3."
    )
    # no validation split: no winner, r=1 against the reference r=3 (paired, one comparison)
    assert "no r is named best (final test accuracy, mean ± std over seeds: " in text
    assert "r=1: 90.00% ± 2.00, r=3: 93.00% ± 1.73" in text
    assert "r=1 − r=3: -3.00 points [-5.48, -0.52], n=3: lower" in text
    assert "reference r=3: r = 3, the paper's choice, is in the runs" in text
    assert "best-on-test" in text


def test_report_files_and_tables(known_report: Report) -> None:
    out = known_report.out_dir
    assert out.name == "report"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 * 3  # one row per run x epoch
    assert {"run", "dataset", "r", "seed", "epoch", "test_acc", "train_eval_acc"} <= set(runs)
    assert sorted(runs["run"].unique())[0] == "mnist/r1/s0"
    first = runs[runs["run"] == "mnist/r1/s0"].iloc[-1]  # epoch 3: 0.95 - 0.88
    assert first["gap"] == pytest.approx(0.07) and first["test_error"] == pytest.approx(0.12)
    saved = pd.read_csv(out / "summary.csv")
    assert saved["final_test_acc_mean"].tolist() == pytest.approx([0.90, 0.93])
    markdown = (out / "summary.md").read_text()
    assert "| mnist" in markdown and "90.00 ± 2.00" in markdown and "93.00 ± 1.73" in markdown
    tex = (out / "summary.tex").read_text()
    assert "\\toprule" in tex and "90.00 $\\pm$ 2.00" in tex and "test acc \\%" in tex
    report_md = (out / "report.md").read_text()
    assert "## Findings" in report_md and "figures/test_acc_vs_r.png" in report_md
    assert "<img" in (out / "report.html").read_text()


def test_partial_sweep_reports_and_lists_the_bad_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    good = metrics_rows([0.5, 0.6], [0.55, 0.7], [0.4, 0.3])
    for r in (1, 3):
        write_run(sweep / "mnist" / f"r{r}" / "s0", run_config("mnist", r, 0, 2), good)
    write_run(
        sweep / "mnist" / "r5" / "s0", run_config("mnist", 5, 0, 2), good[:1],
        status=rundir.STATUS_FAILED, error="NonFiniteLossError: training loss became nan",
    )  # fmt: skip
    write_run(sweep / "mnist/r5/s1", run_config("mnist", 5, 1, 2), good[:1], status="running")
    truncated = write_run(sweep / "mnist/r3/s1", run_config("mnist", 3, 1, 2), good)
    text = (truncated / "metrics.csv").read_text()
    (truncated / "metrics.csv").write_text(text[: len(text) - 40])  # cut inside the last row
    short = write_run(sweep / "mnist/r1/s1", run_config("mnist", 1, 1, 2), good)
    (short / "metrics.csv").write_text(text.splitlines(keepends=True)[0] + text.splitlines()[1])
    (sweep / "mnist/r1/s2").mkdir(parents=True)
    (sweep / "mnist/r1/s2/summary.json").write_text('{"status": "compl')

    report = make_report([sweep])
    warnings = report.runset.warnings.set_index("run")
    assert sorted(warnings.index) == sorted(
        ["mnist/r5/s0", "mnist/r5/s1", "mnist/r3/s1", "mnist/r1/s1", "mnist/r1/s2"]
    )
    assert warnings.loc["mnist/r5/s0", "status"] == "failed"
    assert "training loss became nan" in warnings.loc["mnist/r5/s0", "problem"]
    assert warnings.loc["mnist/r5/s1", "status"] == "running"
    assert "1 of 2 epochs" in warnings.loc["mnist/r5/s1", "problem"]
    assert "metrics.csv row 2 is incomplete" in warnings.loc["mnist/r3/s1", "problem"]
    assert "metrics.csv has 1 epochs, summary.json says 2" in warnings.loc["mnist/r1/s1", "problem"]
    assert "summary.json unreadable" in warnings.loc["mnist/r1/s2", "problem"]
    assert report.summary["r"].tolist() == [1, 3]  # r=5 has no usable run
    assert report.summary["n"].tolist() == [1, 1]
    assert set(pd.read_csv(report.out_dir / "runs.csv")["run"]) == {"mnist/r1/s0", "mnist/r3/s0"}
    assert len(pd.read_csv(report.out_dir / "warnings.csv")) == 5
    assert "mnist/r3/s1" in (report.out_dir / "report.md").read_text()
    assert "5 are left out" in "\n".join(report.findings)
    assert "(n = 1: no interval, so no better or worse)" in "\n".join(report.findings)


def test_other_swept_axis_becomes_a_column(tmp_path: Path) -> None:
    rows = metrics_rows([0.5, 0.6], [0.55, 0.7], [0.4, 0.3])
    for grad in ("all", "last"):
        for r in (1, 2):
            config = run_config("mnist", r, 0, 2, **{"routing.grad": grad})
            config["dataset"]["root"] = f"/data/{grad}{r}"  # where data lives is no axis
            write_run(tmp_path / f"{grad}-r{r}", config, rows, hydra=False)
    report = make_report([tmp_path], out=tmp_path / "out")
    assert report.runset.axes == ["routing.grad"]
    assert report.summary[["routing.grad", "r"]].values.tolist() == [
        ["all", 1], ["all", 2], ["last", 1], ["last", 2],
    ]  # fmt: skip
    assert len(report.comparison) == 2  # r=2 vs r=1 within each routing.grad


def test_copied_run_is_counted_once(tmp_path: Path) -> None:
    rows = metrics_rows([0.5, 0.6], [0.55, 0.7], [0.4, 0.3])
    write_run(tmp_path / "a", run_config("mnist", 3, 0, 2), rows)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runset = load_runs([tmp_path, tmp_path / "a"])  # a is reached twice: found once
    assert runset.found == 2
    assert runset.warnings[["run", "status"]].values.tolist() == [["b", "duplicate"]]
    assert runset.epochs["run"].unique().tolist() == ["a"]


def test_no_runs_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(NoRunsError, match="no run directories") as caught:
        make_report([tmp_path])
    assert caught.value.code == 2


def test_default_path_is_the_newest_sweep(tmp_path: Path) -> None:
    rows = metrics_rows([0.5, 0.6], [0.55, 0.7], [0.4, 0.3])
    old = write_run(tmp_path / "outputs/sweeps/old/mnist/r1/s0", run_config("mnist", 1, 0, 2), rows)
    new = write_run(tmp_path / "outputs/sweeps/new/mnist/r3/s0", run_config("mnist", 3, 0, 2), rows)
    os.utime(tmp_path / "outputs/sweeps/old", (1, 1))
    report = make_report([], cwd=tmp_path)
    assert report.out_dir == tmp_path / "outputs/sweeps/new/report"
    assert report.summary["r"].tolist() == [3]
    assert old.exists() and new.exists()


def test_two_sweeps_with_the_same_layout_stay_apart(tmp_path: Path) -> None:
    for name, acc in (("a", 0.6), ("b", 0.8)):
        rows = metrics_rows([0.5, acc], [0.55, 0.9], [0.4, 0.3])
        config = run_config("mnist", 3, 0, 2, **{"train.lr": 0.001 if name == "a" else 0.002})
        write_run(tmp_path / name / "mnist/r3/s0", config, rows)
    report = make_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    assert sorted(report.runs["run"]) == ["a/mnist/r3/s0", "b/mnist/r3/s0"]
    assert report.summary["final_test_acc_mean"].tolist() == pytest.approx([0.6, 0.8])


def test_several_paths_need_an_output_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--out DIR") as caught:
        make_report([tmp_path, tmp_path])
    assert caught.value.code == 2
