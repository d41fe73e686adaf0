"""No lost work: signals, kills and crashes during training leave a resumable run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capsroute.hydra_app import load_config
from capsroute.run import rundir
from capsroute.run.train import train_run
from tests.cli.test_cli import CAPSROUTE
from tests.run.test_train import numbers as reproducible
from tests.run.test_train import read_rows as rows


@pytest.fixture(scope="module")
def long_overrides(data_root: Path) -> list[str]:
    """Two epochs of 768 images: the second is long enough to be caught in its middle."""
    from tests.conftest import tiny_run_overrides

    return [*tiny_run_overrides(data_root), "dataset.train_size=768", "train.epochs=2"]


@pytest.fixture(scope="module")
def straight(long_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> list:
    """The numbers of the same run trained without interruption (computed once)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train_run(load_config(long_overrides), run)
    return reproducible(run)


def start_training(overrides: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CAPSROUTE, "train", *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen[str]) -> None:
    """Block until `epochs` rows are in metrics.csv (then an epoch is under way)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        path = run_dir / "metrics.csv"
        if path.exists() and len(rows(path)) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for an epoch")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_run_marks_it_interrupted_and_resume_matches(
    tmp_path: Path, long_overrides: list[str], straight: list, signum: signal.Signals
) -> None:
    long_overrides = [*long_overrides, "run_name=victim"]
    run = tmp_path / "outputs" / "runs" / "victim"
    process = start_training(long_overrides, tmp_path)
    wait_for_epochs(run, 1, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "resume" in stderr and "Traceback" not in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    completed = summary["epochs_completed"]
    assert len(rows(run / "metrics.csv")) == completed < 2

    resumed = subprocess.run(
        [CAPSROUTE, "train", *long_overrides], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert reproducible(run) == straight


def test_sigkill_mid_epoch_resumes_from_last_checkpoint_without_duplicate_rows(
    tmp_path: Path, long_overrides: list[str], straight: list
) -> None:
    long_overrides = [*long_overrides, "run_name=victim"]
    run = tmp_path / "outputs" / "runs" / "victim"
    process = start_training(long_overrides, tmp_path)
    wait_for_epochs(run, 1, process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    resumed = subprocess.run(
        [CAPSROUTE, "train", *long_overrides], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in rows(run / "metrics.csv")] == ["1", "2"]
    assert reproducible(run) == straight


def test_crash_during_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_overrides = [*tiny_overrides, "dataset.train_size=128"]
    run = tmp_path / "run"
    train_run(load_config([*tiny_overrides, "train.epochs=1"]), run)
    before = (run / "checkpoint.pt").read_bytes()
    real_replace = os.replace

    def die_on_checkpoint(src: str, dst: str) -> None:
        if str(dst).endswith("checkpoint.pt"):
            raise KeyboardInterrupt  # the process dies between writing and renaming
        real_replace(src, dst)

    monkeypatch.setattr(rundir.os, "replace", die_on_checkpoint)
    with pytest.raises(Exception, match="interrupted"):
        train_run(load_config(tiny_overrides), run)
    monkeypatch.setattr(rundir.os, "replace", real_replace)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    train_run(load_config(tiny_overrides), run)
    train_run(load_config(tiny_overrides), tmp_path / "straight")
    assert reproducible(run) == reproducible(tmp_path / "straight")


def test_truncated_checkpoint_is_refused_not_overwritten(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    from capsroute.errors import CheckpointError

    tiny_overrides = [*tiny_overrides, "dataset.train_size=128"]
    run = tmp_path / "run"
    train_run(load_config([*tiny_overrides, "train.epochs=1"]), run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    metrics = (run / "metrics.csv").read_bytes()
    with pytest.raises(CheckpointError, match="damaged"):
        train_run(load_config(tiny_overrides), run)
    assert (run / "checkpoint.pt").read_bytes() == data[: len(data) // 2]
    assert (run / "metrics.csv").read_bytes() == metrics


def test_entry_point_is_importable_as_module() -> None:
    """`python -m capsroute` is the same CLI (used where the script is not on PATH)."""
    result = subprocess.run(
        [sys.executable, "-m", "capsroute", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "train" in result.stdout


def poison_step(monkeypatch: pytest.MonkeyPatch, bad_step: int) -> None:
    """Feed NaN images into the real training step number `bad_step` (1-based)."""
    import capsroute.run.train as train_module

    real_step = train_module.train_step
    calls = {"n": 0}

    def step(step_fn, optimizer, scaler, batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == bad_step:
            batch = batch._replace(images=batch.images * float("nan"))
        return real_step(step_fn, optimizer, scaler, batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)


def test_nonfinite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from capsroute.run.nonfinite import NonFiniteLossError

    run = tmp_path / "run"
    poison_step(monkeypatch, bad_step=6)  # 4 steps per epoch: the 2nd step of epoch 2
    with pytest.raises(NonFiniteLossError, match="in epoch 2 at step 6"):
        train_run(load_config(tiny_overrides), run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "epoch 2 at step 6" in summary["error"]
    assert summary["epochs_completed"] == 1
    assert len(rows(run / "metrics.csv")) == 1
    from capsroute.run.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoint.pt")["state"]["epoch"] == 1


def test_nonfinite_loss_can_skip_the_step(
    tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_step(monkeypatch, bad_step=2)
    summary = train_run(load_config([*tiny_overrides, "train.nonfinite=skip"]), tmp_path / "r")
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    losses = [float(row["train_loss"]) for row in rows(tmp_path / "r" / "metrics.csv")]
    assert all(loss == loss for loss in losses)  # no NaN reached the weights or the metrics
