"""`capsroute sweep`: real Hydra multiruns on tiny real MNIST runs, through the entry point.

What a user relies on: the directory layout and manifest, that a killed sweep resumes without
touching finished runs, that one failing run neither stops the others nor hides the failure,
that a run held by another process is left alone, and one-line errors for bad options.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from capsroute import hydra_app
from capsroute.config import Config
from capsroute.run import rundir
from capsroute.study.sweep import options as sweep_options
from capsroute.study.sweep import plan as sweep_plan
from capsroute.study.sweep import task as sweep_task
from tests.cli.test_cli import CAPSROUTE, assert_one_line_error, run_cli

RUN_FILES = ("summary.json", "metrics.csv", "routing.csv", "checkpoint.pt", "capsroute.log")


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its mtime and bytes: 'untouched' means equal snapshots."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the sweep ended before the state to interrupt it in"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.02)


def test_killed_sweep_resumes_and_skips_completed_runs(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """r in {1, 2}, 2 epochs: SIGKILL the sweep once run r2 has its first checkpoint.

    The re-run must leave r1 (completed) byte-for-byte alone, finish r2 from its checkpoint
    (epoch 1 is not trained again), and a third run of the command must change nothing.
    """
    args = ["sweep", "--iters", "1,2", "--name", "study", *tiny_overrides]
    root = tmp_path / "outputs" / "sweeps" / "study"
    r1, r2 = root / "mnist" / "r1" / "s0", root / "mnist" / "r2" / "s0"
    process = subprocess.Popen(
        [CAPSROUTE, *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (r2 / "checkpoint.pt").exists(), process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert summary_of(r1)["status"] == "completed"
    assert summary_of(r2)["status"] == "running", "killed after r2's first epoch"
    assert len((r2 / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    epoch1 = (r2 / "metrics.csv").read_text().splitlines()[1]
    r1_files = snapshot(r1)

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "total 2: done 1, will resume 1, new 0" in resumed.stdout
    assert snapshot(r1) == r1_files
    assert "resuming" in (r2 / "capsroute.log").read_text()
    rows = (r2 / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1] == epoch1
    for run in (r1, r2):
        for name in (*RUN_FILES, ".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (run / name).is_file(), run / name
        assert summary_of(run)["status"] == "completed"
        assert summary_of(run)["epochs_completed"] == 2
    assert (root / "multirun.yaml").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["mnist", "multirun.yaml", "sweep.json"]

    manifest = json.loads((root / "sweep.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["grid"] == {
        "dataset": ["mnist"],
        "routing.iterations": ["1", "2"],
        "seed": ["0"],
    }
    assert manifest["command"].startswith("capsroute sweep --iters 1,2 --name study")
    assert manifest["started_at"] and manifest["finished_at"] and manifest["invocations"] == 2
    assert [(r["run_dir"], r["planned"], r["status"]) for r in manifest["runs"]] == [
        ("mnist/r1/s0", "done", "completed"),
        ("mnist/r2/s0", "resume", "completed"),
    ]
    assert all(0 <= r["final_test_acc"] <= 1 for r in manifest["runs"])

    everything = snapshot(root / "mnist")
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "total 2: done 2, will resume 0, new 0" in again.stdout
    assert snapshot(root / "mnist") == everything

    # The same name with another (non-swept) setting must not pass old results off as new.
    changed = run_cli(*args, "train.lr=0.002", cwd=tmp_path)
    assert changed.returncode == 1
    assert "completed with another config 2" in changed.stdout
    assert (
        "train.lr: 0.001 -> 0.002"
        in json.loads((root / "sweep.json").read_text())["runs"][0]["error"]
    )
    assert snapshot(root / "mnist") == everything


def test_a_failing_run_does_not_stop_the_others(
    tmp_path: Path, tiny_overrides: list[str], data_root: Path
) -> None:
    """An extra axis whose second value fails inside the task (no data there).

    The failure happens before training writes any summary; the sweep still records it in
    that run's summary.json, finishes the other run, and exits with status 1. The extra axis
    gets its own directory level, so the two runs do not share a directory.
    """
    nowhere = tmp_path / "nowhere"
    result = run_cli(
        "sweep",
        "--iters",
        "1",
        "--name",
        "mixed",
        *tiny_overrides,
        "train.epochs=1",
        f"dataset.root={nowhere},{data_root}",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 2 runs did not complete" in result.stderr
    assert "Traceback" not in result.stderr
    base = tmp_path / "outputs" / "sweeps" / "mixed" / "mnist" / "r1" / "s0"
    bad = base / sweep_options.slug(f"dataset.root={nowhere}")
    good = base / sweep_options.slug(f"dataset.root={data_root}")
    assert summary_of(good)["status"] == "completed"
    failed = summary_of(bad)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("DataError") and str(nowhere) in failed["error"]
    assert failed["seed"] == 0 and failed["iterations"] == 1
    manifest = json.loads((base.parents[2] / "sweep.json").read_text())
    assert manifest["status"] == "failed"
    assert sorted(r["status"] for r in manifest["runs"]) == ["completed", "failed"]
    assert "failed" in result.stdout and "completed" in result.stdout


def test_a_run_locked_by_another_process_is_left_alone(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """Another sweep (here: this test) holds the run's lock: planned as locked, not launched."""
    run = tmp_path / "outputs" / "sweeps" / "busy" / "mnist" / "r1" / "s0"
    run.mkdir(parents=True)
    args = ["sweep", "--iters", "1", "--name", "busy", *tiny_overrides]
    with rundir.run_lock(run):
        before = snapshot(run)
        dry = run_cli(*args, "--dry-run", cwd=tmp_path)
        result = run_cli(*args, cwd=tmp_path)
        assert snapshot(run) == before
    assert dry.returncode == 0 and "locked by another process 1" in dry.stdout
    assert f"pid {os.getpid()}" in dry.stdout
    assert result.returncode == 1
    assert "locked" in result.stdout and "Launching" not in result.stdout
    manifest = json.loads((run.parents[2] / "sweep.json").read_text())
    assert manifest["runs"][0]["status"] == "locked"
    assert f"in use by pid {os.getpid()}" in manifest["runs"][0]["error"]


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path: Path) -> None:
    result = run_cli(
        "sweep",
        "--iters",
        "1,3",
        "--datasets",
        "mnist,cifar10",
        "--seeds",
        "0,1",
        "train.lr=0.001,0.0005",
        "--dry-run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "total 16: done 0, will resume 0, new 16" in result.stdout
    assert "cifar10/r3/s1/train.lr=0.0005" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_user_overrides_win_over_the_command_defaults(tmp_path: Path) -> None:
    """`seed=...` instead of --seeds, and a hydra.sweep.dir of the user's choosing."""
    request = sweep_options.SweepRequest(
        iters=[2], overrides=["seed=5,6", f"hydra.sweep.dir={tmp_path}/mine"], dry_run=True
    )
    plan = sweep_plan.plan_sweep(request)
    assert plan.root == tmp_path / "mine"
    assert [run.run_dir for run in plan.runs] == [
        tmp_path / "mine" / "mnist" / "r2" / "s5",
        tmp_path / "mine" / "mnist" / "r2" / "s6",
    ]


BAD_SWEEPS = [
    (["--iters", "0,1"], "--iters: '0' is not an integer >= 1"),
    (["--iters", "1,x"], "--iters: 'x' is not an integer >= 1"),
    (["--iters", "1,3,1"], "--iters: '1' is listed twice"),
    (["--iters", ""], "--iters needs a comma-separated list"),
    (["--iters", "1", "--seeds", "-1"], "--seeds: '-1' is not an integer >= 0"),
    (["--iters", "1", "--datasets", "mnist,imagenet"], "unknown dataset 'imagenet'"),
    (["--iters", "1", "--datasets", "mnist,mnist"], "'mnist' is listed twice"),
    ([], "--iters is required"),
    (["--iters", "1", "--launcher", "slurm"], "unknown launcher 'slurm'"),
    (["--iters", "1", "--jobs", "2"], "--jobs needs a parallel launcher"),
    (["--iters", "1", "--name", "../x"], "must be one directory name"),
    (["--iters", "1,2", "routing.iterations=3"], "both set routing.iterations"),
    (["--iters", "1", "train.lr=0.1,-1"], "train.lr must be > 0"),
    (["--iters", "1", "train.lrr=0.1"], "unknown config key 'train.lrr'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SWEEPS, ids=[" ".join(a) for a, _ in BAD_SWEEPS])
def test_bad_sweep_input_is_one_line_and_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert_one_line_error(run_cli("sweep", *args, cwd=tmp_path), 2, message)
    assert not (tmp_path / "outputs").exists()


def test_submitit_slurm_config_composes_with_its_settings() -> None:
    """The packaged launcher config extends the plugin's typed one (no cluster needed)."""
    request = sweep_options.SweepRequest(
        iters=[1, 3],
        launcher="submitit_slurm",
        jobs=4,
        overrides=["hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"],
    )
    overrides = sweep_options.build_overrides(request, "slurm-test")
    hydra_lines, jobs = sweep_plan.expand_jobs(overrides)
    cfg = hydra_app.compose_config([*hydra_lines, *jobs[0]], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.array_parallelism) == ("gpu", 90, 4)
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.max_num_timeout) == (1, 8, 3)
    assert launcher.signal_delay_s == 120  # inherited from the plugin's own config
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.capsroute_sweeper.ResumableSweeper"
    assert len(jobs) == 2


def fake_hydra(launcher: str, **extra: object) -> object:
    targets = {
        "basic": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    }
    return OmegaConf.create(
        {
            "launcher": {"_target_": targets[launcher], "n_jobs": extra.get("n_jobs", 1)},
            "sweeper": {"max_batch_size": extra.get("batch")},
            "job": {"num": extra.get("num", 0)},
        }
    )


def test_parallel_jobs_split_cpu_cores_and_spread_over_gpus(monkeypatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(sweep_task, "_cores", lambda: 16)
    monkeypatch.setattr(sweep_task, "visible_gpus", lambda: 0)
    assert sweep_task.place_job(Config(), fake_hydra("joblib", n_jobs=4)).train.threads == 4
    assert sweep_task.place_job(Config(), fake_hydra("local", batch=8)).train.threads == 2
    assert sweep_task.place_job(Config(), fake_hydra("basic")).train.threads is None
    mine = Config()
    mine.train.threads = 3
    assert sweep_task.place_job(mine, fake_hydra("joblib", n_jobs=4)).train.threads == 3

    monkeypatch.setattr(sweep_task, "visible_gpus", lambda: 3)
    devices = [
        sweep_task.place_job(Config(), fake_hydra("joblib", n_jobs=3, num=num)).device
        for num in range(5)
    ]
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert sweep_task.place_job(Config(), fake_hydra("basic", num=4)).device == "auto"
    pinned = Config(device="cpu")
    assert sweep_task.place_job(pinned, fake_hydra("joblib", n_jobs=3, num=1)).device == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_the_grid(
    tmp_path: Path, tiny_overrides: list[str], launcher: str
) -> None:
    args = ["sweep", "--iters", "1,2", "--name", "par", "--launcher", launcher, "--jobs", "2"]
    result = run_cli(*args, *tiny_overrides, "train.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    root = tmp_path / "outputs" / "sweeps" / "par"
    for r in (1, 2):
        run = root / "mnist" / f"r{r}" / "s0"
        assert summary_of(run)["status"] == "completed"
        assert summary_of(run)["config"]["train"]["threads"] == max(1, sweep_task._cores() // 2)
    manifest = json.loads((root / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["completed", "completed"]
