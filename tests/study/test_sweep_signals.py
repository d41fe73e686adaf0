"""SIGTERM to a parallel sweep stops its workers too (issue 19): no run keeps training under
PID 1 holding its lock, every run is recorded `interrupted`, and so is `sweep.json`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from capsroute.run import rundir
from capsroute.study.sweep.signals import _alive, _is_helper, descendants
from tests.cli.test_cli import CAPSROUTE

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


@pytest.mark.slow
def test_sigterm_stops_a_joblib_sweep_and_its_workers(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    root = tmp_path / "outputs" / "sweeps" / "par"
    args = ["sweep", "--iters", "1,2", "--name", "par", "--launcher", "joblib", "--jobs", "2"]
    process = subprocess.Popen(
        [CAPSROUTE, *args, *tiny_overrides, "train.epochs=50"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = [root / "mnist" / f"r{r}" / "s0" for r in (1, 2)]
    deadline = time.monotonic() + 300
    while not all((run / rundir.METRICS_FILE).exists() for run in runs):  # both train
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    # the training workers (joblib's resource tracker cleans up after them, and goes itself)
    workers = [pid for pid in descendants(process.pid) if not _is_helper(pid)]
    assert workers
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    alive = [pid for pid in workers if _alive(pid)]
    assert not alive, f"workers still running: {alive}"
    for run in runs:
        assert rundir.lock_holder(run) is None
        assert json.loads((run / rundir.SUMMARY_FILE).read_text())["status"] == "interrupted"
    assert json.loads((root / "sweep.json").read_text())["status"] == "interrupted"
