"""SLURM support that needs no cluster: the request check against `sinfo`, the one-line
failure of a submitit job, the pending reasons that never clear, the lock that names its SLURM
job, and a run that exits for a requeue being recorded as interrupted.

The same paths on a real cluster are in tests/cluster/test_slurm.py (marker `slurm`); the
`sinfo`/submitit texts below are the ones SLURM 22.05 and submitit 1.5.4 printed there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsroute import hydra_app
from capsroute.errors import ConfigError, RunDirError
from capsroute.run import rundir
from capsroute.run import train as train_module
from capsroute.study.sweep import options as sweep_options
from capsroute.study.sweep import plan as sweep_plan
from capsroute.study.sweep import slurm, slurm_jobs

# `sinfo -h -o '%P|%c|%m|%G|%l'` of the test cluster, plus a GPU partition with mixed nodes
SINFO = """main*|2|21695|(null)|infinite
gpu|32+|257000|gpu:a100:4(S:0-1)|2-00:00:00
gpu|64|515000|gpu:a100:8(S:0-1)|2-00:00:00
short|8|16000|(null)|1:00:00
"""

# the packaged launcher config as `capsroute sweep --launcher submitit_slurm` composes it
PACKAGED = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "timeout_min": 720}
SIGNAL = {"signal_delay_s": 120}


def test_sinfo_partitions_take_their_largest_node_and_the_default_mark() -> None:
    parts = slurm.parse_sinfo(SINFO)
    assert parts["main"] == slurm.Partition("main", 2, 21695, 0, None, default=True)
    assert parts["gpu"] == slurm.Partition("gpu", 64, 515000, 8, 2 * 24 * 60)
    assert parts["short"].time_limit_min == 60
    assert [slurm.parse_time_limit(t) for t in ("30", "30:00", "1:30:01", "1-12")] == [
        30,
        30,
        91,
        36 * 60,
    ]
    assert [slurm.gres_gpus(g) for g in ("(null)", "gpu:2", "gpu", "gpu:v100:2,gpu:a100:1")] == [
        0,
        2,
        1,
        3,
    ]


def test_the_packaged_request_is_refused_on_a_small_cpu_cluster_naming_each_override() -> None:
    with pytest.raises(ConfigError) as refused:
        slurm.check_request({**PACKAGED, **SIGNAL}, slurm.parse_sinfo(SINFO))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the SLURM request does not fit partition main (2 CPUs, 21695 MB")
    for fix in (
        "hydra.launcher.gpus_per_node=0 for CPU-only runs",
        "hydra.launcher.cpus_per_task=2 or less",
        "hydra.launcher.mem_gb=21 or less",
    ):
        assert fix in message
    small = {**PACKAGED, **SIGNAL, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2}
    assert slurm.check_request(small, slurm.parse_sinfo(SINFO)).name == "main"


def test_time_limit_partition_name_and_signal_delay_are_checked() -> None:
    parts = slurm.parse_sinfo(SINFO)
    fits = {"cpus_per_task": 1, "mem_gb": 2, **SIGNAL}
    with pytest.raises(ConfigError, match=r"timeout_min=720 is over short's limit of 60 min"):
        slurm.check_request({**fits, "partition": "short", "timeout_min": 720}, parts)
    with pytest.raises(ConfigError, match=r"partition=cpu: no such partition; sinfo lists: gpu"):
        slurm.check_request({**fits, "partition": "cpu", "timeout_min": 60}, parts)
    with pytest.raises(ConfigError, match=r"signal_delay_s=120 leaves less than 30 s"):
        slurm.check_request({**fits, "timeout_min": 2}, parts)
    gpu = {**fits, "partition": "gpu", "gpus_per_node": 8, "cpus_per_task": 64, "timeout_min": 60}
    assert slurm.check_request(gpu, parts).name == "gpu"
    with pytest.raises(ConfigError, match=r"gpus_per_node=8 or less"):
        slurm.check_request({**gpu, "gres": "gpu:9"}, parts)


def test_the_sweep_plan_carries_the_composed_launcher_request(tmp_path: Path) -> None:
    request = sweep_options.SweepRequest(
        iters=[1],
        launcher="submitit_slurm",
        name="plan",
        dry_run=True,
        overrides=[f"out_root={tmp_path}", "hydra.launcher.cpus_per_task=1"],
    )
    plan = sweep_plan.plan_sweep(request)
    assert slurm.is_slurm_launcher(plan.launcher)
    assert slurm.job_request(plan.launcher) == slurm.Request(
        cpus=1, mem_mb=32 * 1024, gpus=1, timeout_min=720, signal_delay_s=120
    )


def test_sacct_and_sinfo_failures_are_one_line(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands at all
    with pytest.raises(slurm.SlurmError, match=r"^sinfo not found: .* \(a login node\)$"):
        slurm.preflight(PACKAGED)
    with pytest.raises(slurm.SlurmError) as refused:
        slurm.check_accounting()
    assert str(refused.value).startswith("SLURM accounting is not available (sacct not found")
    assert "nothing was submitted" in str(refused.value)


# submitit 1.5.4's messages, as raised by job.result() on the test cluster
RAISED = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "/x/submitit/core/submission.py", line 55, in process_job
    result = delayed.result()
  File "/x/submitit/core/job_environment.py", line 227, in checkpoint_and_try_requeue
    raise utils.UncompletedJobError(message)
submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.

----------------------
You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
  - /s/.submitit/17/17_0_log.err
  - /s/.submitit/17/17_0_log.out"""
NO_OUTPUT = """Job 34_0 (task: 0) with path /s/.submitit/34_0/34_0_0_result.pkl
has not produced any output (state: CANCELLED by 0)
Error stream produced:
----------------------------------------
slurmstepd: error: *** JOB 34 ON vm CANCELLED AT 2026-11-30T18:23:14 ***"""


def test_a_failed_job_is_one_line_with_run_job_reason_and_logs(tmp_path: Path) -> None:
    assert slurm_jobs.job_failure_reason(RAISED) == (
        "UncompletedJobError: Job not requeued because: timed-out too many times."
    )
    assert (
        slurm_jobs.job_failure_reason(NO_OUTPUT) == "ended without a result (state CANCELLED by 0)"
    )
    run_dir = tmp_path / "mnist" / "r1" / "s0"
    run_dir.mkdir(parents=True)
    (run_dir / rundir.SUMMARY_FILE).write_text(
        '{"status": "interrupted", "epochs_completed": 4, "error": "stopped by SIGTERM"}'
    )

    class Job:  # the two attributes of submitit.Job the line reads
        job_id = "34_0"

    run = slurm_jobs.SubmittedRun(Job(), "mnist/r1/s0", tmp_path / ".submitit" / "34_0", run_dir)
    line = slurm_jobs.failure_line(
        run, "failed: " + slurm_jobs.job_failure_reason(NO_OUTPUT), slurm_jobs.run_note(run_dir)
    )
    assert line == (
        "run mnist/r1/s0: SLURM job 34_0 failed: ended without a result (state CANCELLED by 0); "
        "run interrupted after epoch 4 (stopped by SIGTERM); "
        f"logs: {tmp_path}/.submitit/34_0/"
    )


def test_pending_reasons_that_never_clear_are_told_apart() -> None:
    states = slurm_jobs.parse_squeue("40_0|PENDING|PartitionConfig\n40_1|PENDING|Resources\n")
    assert states == {"40_0": ("PENDING", "PartitionConfig"), "40_1": ("PENDING", "Resources")}
    assert "PartitionConfig" in slurm_jobs.UNCLEARABLE_REASONS
    assert not {"Resources", "Priority", "BeginTime", "JobHeldAdmin"} & (
        slurm_jobs.UNCLEARABLE_REASONS
    )


def test_a_run_locked_by_a_slurm_job_names_the_job_and_scancel(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "45")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    with rundir.run_lock(tmp_path):
        holder = rundir.lock_holder(tmp_path)
        assert holder == f"pid {os.getpid()} on {os.uname().nodename} (SLURM job 45_1)"
        monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
        with pytest.raises(RunDirError) as locked, rundir.run_lock(tmp_path):
            pass
    assert "(SLURM job 45_1); cancel it with `scancel 45_1` or wait for it to end" in str(
        locked.value
    )
    state, _ = sweep_plan.run_state(tmp_path, 2)
    assert state == sweep_plan.STATE_NEW  # released when the holder ended


def test_a_run_exiting_for_a_slurm_requeue_is_recorded_interrupted(
    monkeypatch, tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """submitit's USR2 handler requeues the job, then `sys.exit(-1)` inside the training loop:
    the run must say interrupted (not running) until the requeued job resumes it."""
    monkeypatch.setenv("SLURM_JOB_ID", "36")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    real_epoch = train_module.run_epoch

    def epoch_then_requeue(config, epoch, *args, **kwargs):
        if epoch == 2:
            raise SystemExit(-1)  # what submitit's SignalHandler._exit does
        return real_epoch(config, epoch, *args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", epoch_then_requeue)
    config = hydra_app.load_config([*tiny_overrides, "train.epochs=3"])
    with pytest.raises(SystemExit):
        train_module.train_run(config, tmp_path)
    summary = rundir.read_summary(tmp_path)
    assert summary["status"] == rundir.STATUS_INTERRUPTED
    assert summary["epochs_completed"] == 1
    assert summary["error"].startswith(
        "requeued: SLURM job 36 exited (SystemExit -1) after epoch 1"
    )
    assert (tmp_path / rundir.CHECKPOINT_FILE).exists()
    assert rundir.lock_holder(tmp_path) is None
