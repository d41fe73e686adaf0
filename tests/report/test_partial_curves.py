"""Running and interrupted runs in `capsroute report`: curves so far, never in the tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from capsroute.report import plots
from capsroute.report.build import make_report
from capsroute.run import rundir
from tests.report.fixtures import metrics_rows, run_config, write_run


def test_unfinished_runs_are_drawn_dotted_but_left_out_of_the_tables(
    tmp_path: Path, monkeypatch
) -> None:
    sweep = tmp_path / "sweep"
    rows = metrics_rows([0.5, 0.6, 0.7], [0.55, 0.7, 0.8], [0.4, 0.3, 0.2])
    for r in (1, 3):
        write_run(sweep / f"mnist/r{r}/s0", run_config("mnist", r, 0, 3), rows)
    write_run(sweep / "mnist/r5/s0", run_config("mnist", 5, 0, 3), rows[:2], status="running")
    write_run(
        sweep / "mnist/r3/s1", run_config("mnist", 3, 1, 3), rows[:1],
        status=rundir.STATUS_INTERRUPTED,
    )  # fmt: skip
    write_run(
        sweep / "mnist/r1/s1", run_config("mnist", 1, 1, 3), rows[:1], status="failed", error="x"
    )
    figures: dict[str, Figure] = {}
    saved = plots._save

    def keep(fig: Figure, path: Path) -> Path:
        figures[path.name] = fig
        lines = [
            (line.get_label(), line.get_linestyle(), list(line.get_xdata()))
            for line in fig.axes[0].lines
        ]
        figures[path.name + ":lines"] = lines  # type: ignore[assignment]
        return saved(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    report = make_report([sweep])

    partial = report.runset.partial
    assert sorted(set(zip(partial["run"], partial["status"], strict=True))) == [
        ("mnist/r3/s1", rundir.STATUS_INTERRUPTED),
        ("mnist/r5/s0", rundir.STATUS_RUNNING),
    ]
    assert partial.groupby("run")["epoch"].max().to_dict() == {"mnist/r3/s1": 1, "mnist/r5/s0": 2}
    # the tables: completed runs only; the unfinished ones stay listed as left out
    assert report.summary["r"].tolist() == [1, 3] and report.summary["n"].tolist() == [1, 1]
    assert set(report.runset.warnings["run"]) == {"mnist/r5/s0", "mnist/r3/s1", "mnist/r1/s1"}
    assert "1 runs are still running and 1 were interrupted" in "\n".join(report.findings)
    assert "still running" in (report.out_dir / "report.md").read_text()
    # the curves: one dotted line per unfinished run, up to its last epoch; failed runs not drawn
    for name in ("test_acc_curves.png", "gap_curves.png", "train_loss.png"):
        lines = figures[name + ":lines"]
        dotted = {label: xs for label, style, xs in lines if style == ":"}
        assert dotted == {
            "mnist/r3/s1 (interrupted, epoch 1)": [1],
            "mnist/r5/s0 (running, epoch 2)": [1, 2],
        }, name
        assert not any("r1/s1" in label for label, _, _ in lines)
    assert set(pd.read_csv(report.out_dir / "runs.csv")["run"]) == {"mnist/r1/s0", "mnist/r3/s0"}
