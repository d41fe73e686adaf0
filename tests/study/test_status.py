"""`capsroute status`: a sweep's table from its run directories alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from capsroute.errors import ConfigError
from capsroute.io import write_csv
from capsroute.run import rundir
from capsroute.study.status import (
    STATE_PENDING,
    STATE_STALE,
    format_duration,
    newest_sweep,
    read_status,
    status_table,
)
from capsroute.study.sweep.manifest import MANIFEST_FILE
from tests.cli.test_cli import run_cli
from tests.conftest import TINY_MODEL

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
EPOCH_SECONDS = 60.0


def make_run(root: Path, name: str, status: str, accs: list[float], epochs: int = 4) -> Path:
    """A run directory as training leaves it after len(accs) epochs of EPOCH_SECONDS each."""
    run = root / name
    run.mkdir(parents=True)
    rows = [
        {"epoch": i + 1, "test_acc": acc, "images_per_s": 100.0 + i, "epoch_seconds": 50.0}
        for i, acc in enumerate(accs)
    ]
    write_csv(run / rundir.METRICS_FILE, rows, rundir.METRICS_COLUMNS)
    summary = {
        "status": status,
        "epochs": epochs,
        "epochs_completed": len(accs),
        "wall_seconds": EPOCH_SECONDS * len(accs),
        "updated_at": datetime.fromtimestamp(NOW - 30, UTC).isoformat(timespec="seconds"),
        "error": "boom" if status == rundir.STATUS_FAILED else None,
    }
    (run / rundir.SUMMARY_FILE).write_text(json.dumps(summary))
    return run


@pytest.fixture()
def sweep_root(tmp_path: Path) -> Path:
    """A sweep with one run in each state; `running` holds its lock like a live process."""
    root = tmp_path / "outputs" / "sweeps" / "grid"
    make_run(root, "mnist/r1/s0", rundir.STATUS_COMPLETED, [0.5, 0.7, 0.9, 0.8])
    make_run(root, "mnist/r3/s0", rundir.STATUS_RUNNING, [0.6, 0.8])
    make_run(root, "mnist/r5/s0", rundir.STATUS_FAILED, [0.4])
    make_run(root, "mnist/r7/s0", rundir.STATUS_INTERRUPTED, [0.3, 0.5, 0.6])
    make_run(root, "mnist/r9/s0", rundir.STATUS_RUNNING, [0.2])  # killed: nobody holds the lock
    runs = [f"mnist/r{r}/s0" for r in (1, 3, 5, 7, 9, 11)]
    manifest = {"status": "running", "runs": [{"run_dir": r, "epochs": 4} for r in runs]}
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return root


def test_every_state_with_progress_accuracy_time_and_eta(sweep_root: Path) -> None:
    with rundir.run_lock(sweep_root / "mnist/r3/s0"):
        status = read_status(sweep_root, now=NOW)
    runs = {run.name: run for run in status.runs}
    assert {name: run.state for name, run in runs.items()} == {
        "mnist/r1/s0": rundir.STATUS_COMPLETED,
        "mnist/r3/s0": rundir.STATUS_RUNNING,
        "mnist/r5/s0": rundir.STATUS_FAILED,
        "mnist/r7/s0": rundir.STATUS_INTERRUPTED,
        "mnist/r9/s0": STATE_STALE,
        "mnist/r11/s0": STATE_PENDING,
    }
    done = runs["mnist/r1/s0"]
    assert (done.epoch, done.epochs, done.last_acc, done.best_acc) == (4, 4, 0.8, 0.9)
    assert done.images_per_s == 103.0 and done.eta == 0.0
    running = runs["mnist/r3/s0"]
    assert (running.epoch, running.epochs, running.last_acc, running.best_acc) == (2, 4, 0.8, 0.8)
    assert running.seconds == 2 * EPOCH_SECONDS + 30  # 30 s into epoch 3
    assert running.eta == 2 * EPOCH_SECONDS - 30
    assert runs["mnist/r11/s0"].eta == 4 * EPOCH_SECONDS  # the sweep's mean epoch time
    assert runs["mnist/r5/s0"].error == "boom"
    assert runs["mnist/r7/s0"].eta is None and not status.ended
    console = Console(record=True, width=200)
    console.print(status_table(status))
    text = console.export_text()
    assert text.index("mnist/r3/s0") < text.index("mnist/r11/s0")
    assert "total 6" in text and "11/24" in text and "1 running" in text and "1 stale" in text


def test_sweep_ends_when_nothing_runs_or_waits(sweep_root: Path) -> None:
    assert not read_status(sweep_root, now=NOW).ended  # one pending run
    manifest = json.loads((sweep_root / MANIFEST_FILE).read_text())
    (sweep_root / MANIFEST_FILE).write_text(json.dumps({**manifest, "status": "failed"}))
    assert read_status(sweep_root, now=NOW).ended


def test_durations_read_as_hours_minutes_seconds() -> None:
    assert [format_duration(s) for s in (None, 5, 65, 3725)] == ["-", "5s", "1m05s", "1h02m"]


def test_cli_picks_the_newest_sweep_under_out_root(tmp_path: Path, sweep_root: Path) -> None:
    other = tmp_path / "elsewhere"
    result = run_cli("status", f"out_root={tmp_path / 'outputs'}", cwd=other.parent)
    assert result.returncode == 0, result.stderr
    assert "sweep grid" in result.stdout and "mnist/r11/s0" in result.stdout
    with pytest.raises(ConfigError, match="no sweeps under"):
        newest_sweep(tmp_path / "outputs" / "sweeps")
    with pytest.raises(ConfigError, match="does not exist"):
        read_status(tmp_path / "nope")


def test_status_of_a_real_tiny_sweep(tmp_path: Path, data_root: Path) -> None:
    """A real sweep of one one-epoch run: completed, with its accuracy and speed."""
    train = [
        f"dataset.root={data_root}",
        "dataset.train_size=64",
        "dataset.test_size=64",
        "dataset.train_eval_size=64",
        "train.batch_size=64",
        "train.epochs=1",
        "train.progress=false",
        *TINY_MODEL,
    ]
    swept = run_cli("sweep", "--iters", "2", "--name", "tiny", *train, cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-2000:]
    status = read_status(tmp_path / "outputs" / "sweeps" / "tiny")
    assert [(r.name, r.state, r.epoch, r.epochs) for r in status.runs] == [
        ("mnist/r2/s0", rundir.STATUS_COMPLETED, 1, 1),
    ]
    assert all(r.last_acc is not None and r.images_per_s > 0 for r in status.runs)
    assert status.ended
    shown = run_cli("status", cwd=tmp_path)
    assert shown.returncode == 0 and "1 completed" in shown.stdout, shown.stderr


def test_watch_refreshes_until_the_sweep_ends(sweep_root: Path) -> None:
    """--watch keeps reading while a run is pending; the sweep finishing ends it."""
    import threading

    from capsroute.study.status import show_status

    def finish_sweep() -> None:
        manifest = json.loads((sweep_root / MANIFEST_FILE).read_text())
        (sweep_root / MANIFEST_FILE).write_text(json.dumps({**manifest, "status": "completed"}))

    console = Console(record=True, width=200)
    result = []
    watcher = threading.Thread(
        target=lambda: result.append(show_status(sweep_root, console, True, interval=0.05)),
        daemon=True,
    )
    watcher.start()
    watcher.join(timeout=0.5)
    assert watcher.is_alive()  # a run is pending: still watching
    finish_sweep()
    watcher.join(timeout=30)
    assert not watcher.is_alive()
    assert result[0].ended and result[0].sweep_state == "completed"
    assert "mnist/r11/s0" in console.export_text()
