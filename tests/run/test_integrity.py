"""A run's record changes only when training changes it (issue 19), in the library.

One tiny run is trained once per module (`train_run`, 64 images, one epoch); each test works on
a copy. The entry-point side (refusals, damaged files) is in tests/cli/test_damaged_inputs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from capsroute.hydra_app import load_config
from capsroute.run import rundir
from capsroute.run.nonfinite import NonFiniteLossError, likely_cause
from capsroute.run.train import train_run
from tests.cli.test_cli import run_cli
from tests.cli.test_damaged_inputs import base_overrides
from tests.run.test_reliability import poison_step


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train_run(load_config(base_overrides(data_root)), run)["status"] == "completed"
    return run


def without_epochs(data_root: Path) -> list[str]:
    return [o for o in base_overrides(data_root) if not o.startswith("train.epochs=")]


def hashes(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK_FILE
    }


def test_completed_run_is_left_byte_identical_and_cut_writes_are_cleaned(
    trained: Path, tmp_path: Path, data_root: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = hashes(run)
    leftover = run / ".checkpoint.pt.12345.tmp"  # what SIGKILL during a save leaves
    leftover.write_bytes(b"x" * 1000)
    summary = train_run(load_config(base_overrides(data_root)), run)
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert not leftover.exists()
    assert hashes(run) == before


def test_fewer_epochs_on_a_completed_run_exits_0_and_writes_nothing(
    tmp_path: Path, data_root: Path
) -> None:
    """The CLI decides before Hydra runs: not even `.hydra/` is rewritten."""
    overrides = without_epochs(data_root)
    assert run_cli("train", *overrides, "train.epochs=2", cwd=tmp_path).returncode == 0
    run = tmp_path / "outputs" / "runs" / "base1"
    before = hashes(run)
    again = run_cli("train", *overrides, "train.epochs=1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already completed 2 epochs (asked for 1)" in again.stdout
    assert hashes(run) == before
    assert json.loads((run / "summary.json").read_text())["config"]["train"]["epochs"] == 2


def test_sigterm_during_start_up_is_recorded(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import capsroute.run.train as train_module
    from capsroute.run.signals import InterruptedRunError

    real = train_module.make_splits

    def splits_then_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the data load
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_splits", splits_then_signal)
    run = tmp_path / "run"
    with pytest.raises(InterruptedRunError, match="SIGTERM"):
        train_run(load_config(base_overrides(data_root)), run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 0


def test_sigterm_during_the_first_checkpoint_write_keeps_that_checkpoint(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import capsroute.run.train as train_module
    from capsroute.run.checkpoint import load_checkpoint
    from capsroute.run.signals import InterruptedRunError

    real = train_module.save_checkpoint

    def signal_then_save(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", signal_then_save)
    run = tmp_path / "run"
    overrides = [*without_epochs(data_root), "train.epochs=2"]
    with pytest.raises(InterruptedRunError):
        train_run(load_config(overrides), run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert load_checkpoint(run / "checkpoint.pt")["state"]["epoch"] == 1


def test_every_step_skipped_is_a_failure_not_completed(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2):  # both steps of the only epoch (64 images, batch 32)
        poison_step(monkeypatch, bad_step=step)
    overrides = [*base_overrides(data_root), "train.nonfinite=skip"]
    with pytest.raises(NonFiniteLossError, match="every training step of epoch 1"):
        train_run(load_config(overrides), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=0.5", "train.lr=0.5"),
        ("model.recon_weight=100", "model.recon_weight=100"),
        ("train.precision=bf16", "train.precision=bf16"),
        ("seed=1", "lower train.lr"),
    ],
)
def test_nonfinite_advice_names_the_likely_key(override: str, key: str) -> None:
    assert key in likely_cause(load_config([override]))
