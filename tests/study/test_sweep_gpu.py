"""`capsroute sweep --jobs-per-gpu K`: K packed runs per GPU through the joblib launcher, the
CPU threads split between them, and a private CUDA MPS daemon started and stopped around it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from capsroute.errors import ConfigError
from capsroute.study.sweep import gpu_share
from capsroute.study.sweep import task as sweep_task
from capsroute.study.sweep.options import SweepRequest, launcher_overrides
from tests.study.test_sweep import fake_hydra


def gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_jobs_per_gpu_sets_the_launcher_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    out = launcher_overrides(SweepRequest(launcher="joblib", jobs_per_gpu=3), set())
    assert out["hydra.launcher.n_jobs"] == "hydra.launcher.n_jobs=6"
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    local = launcher_overrides(SweepRequest(launcher="submitit_local", jobs_per_gpu=2), set())
    assert local["hydra.sweeper.max_batch_size"] == "hydra.sweeper.max_batch_size=4"


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"launcher": None, "jobs_per_gpu": 2}, "local parallel launcher"),
        ({"launcher": "submitit_slurm", "jobs_per_gpu": 2}, "local parallel launcher"),
        ({"launcher": "joblib", "jobs_per_gpu": 2, "jobs": 4}, "use one"),
        ({"launcher": "joblib", "jobs_per_gpu": 0}, ">= 1"),
    ],
)
def test_jobs_per_gpu_refuses_bad_combinations(
    monkeypatch: pytest.MonkeyPatch, request_args: dict[str, object], message: str
) -> None:
    gpus(monkeypatch, 1)
    with pytest.raises(ConfigError, match=message):
        launcher_overrides(SweepRequest(**request_args), set())  # type: ignore[arg-type]


def test_jobs_per_gpu_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        launcher_overrides(SweepRequest(launcher="joblib", jobs_per_gpu=2), set())


def test_packed_gpu_jobs_split_the_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from capsroute.config import Config

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(sweep_task, "_cores", lambda: 16)
    monkeypatch.setattr(sweep_task, "visible_gpus", lambda: 1)
    placed = sweep_task.place_job(Config(), fake_hydra("joblib", n_jobs=6, num=4))
    assert placed.device == "auto" and placed.train.threads == 2  # one GPU: cuda by auto


def fake_mps_control(tmp_path: Path) -> Path:
    """A stand-in `nvidia-cuda-mps-control` that records its arguments, stdin and pipe dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / gpu_share.MPS_CONTROL
    record = tmp_path / "calls.txt"
    script.write_text(
        f'#!/bin/sh\necho "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {record}\n'
        f'if [ -z "$1" ]; then cat >> {record}; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_mps_daemon_starts_and_quits_around_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_mps_control(tmp_path)}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    root = tmp_path / "sweep"
    with gpu_share.mps_daemon(root, wanted=True) as running:
        assert running
        assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(root / ".mps" / "pipe")
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    pipe = root / ".mps" / "pipe"
    assert calls == [f"args=-d pipe={pipe}", f"args= pipe={pipe}", "quit"]


def test_no_mps_without_its_control_binary_or_when_not_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with gpu_share.mps_daemon(tmp_path, wanted=True) as running:
        assert not running
    monkeypatch.setenv("PATH", f"{fake_mps_control(tmp_path)}:{os.environ['PATH']}")
    with gpu_share.mps_daemon(tmp_path, wanted=False) as running:
        assert not running
    assert not (tmp_path / "calls.txt").exists()


def test_idle_launcher_workers_are_stopped_so_mps_can_quit() -> None:
    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=1)
    assert executor.submit(int, "7").result() == 7
    worker = next(iter(executor._processes.values()))
    gpu_share.stop_idle_workers()
    worker.join(timeout=10)
    assert not worker.is_alive()
