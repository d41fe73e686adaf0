"""`capsroute sweep --launcher submitit_slurm` on a real single-node SLURM 22.05 cluster.

The module fixture brings the cluster up with tests/cluster/slurm_up.sh (idempotent; ~1-8 s
with the packages present) and leaves it running. It skips, with one reason, when this
machine cannot host it (not root, no apt-get, apt unreachable for a first install). Every
test drives the real entry point on tiny real MNIST runs and checks SLURM's own record
(`sacct`) of what was submitted. Marked `slurm`: `make test-slurm` runs it, `make test` not.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.test_cli import CAPSROUTE, run_cli
from tests.conftest import tiny_run_overrides

pytestmark = pytest.mark.slurm

HERE = Path(__file__).resolve().parent
STATE_DIR = Path(os.environ.get("CAPSROUTE_SLURM_STATE", "/run/capsroute-slurm"))
# what a 2-CPU, ~21 GB, GPU-less node can run (the packaged defaults ask 1 GPU, 8 CPUs, 32 GB)
SMALL_NODE = [
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
RUN = "mnist/r1/s0"
PARTITION = os.environ.get("CAPSROUTE_SLURM_PARTITION", "main")  # slurm_up.sh's one partition
SMOKE_JOB = "capsroute-smoke"  # the srun job slurm_up.sh runs to check the cluster
WIDE = {"COLUMNS": "300"}  # rich tables unwrapped, so a cell's text is on one line
SUBMITTED = re.compile(r"submitted SLURM jobs (.*?); logs: ")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> None:
    """The single-node cluster, up (skips when this machine cannot run it).

    Only when asked for by marker (`pytest -m slurm`, `make test-slurm`): a plain `pytest` as
    root must not install packages and start daemons.
    """
    markexpr = str(request.config.getoption("markexpr") or "")
    if "slurm" not in markexpr.replace("not slurm", ""):
        pytest.skip("SLURM cluster tests run only when selected: pytest -m slurm (make test-slurm)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (tests/cluster/slurm_up.sh starts daemons)")
    if shutil.which("apt-get") is None:
        pytest.skip("the SLURM test cluster needs apt-get (Debian's slurm-wlm packages)")
    started = time.monotonic()
    up = subprocess.run(
        ["bash", str(HERE / "slurm_up.sh")], capture_output=True, text=True, timeout=900
    )
    if up.returncode != 0:
        line = (up.stderr.strip().splitlines() or ["slurm_up.sh failed"])[-1]
        if "apt-get update failed" in line:
            pytest.skip(line)
        pytest.fail(line)
    print(f"cluster up in {time.monotonic() - started:.1f} s")


def overrides(tmp_path: Path, data_root: Path, **changes: object) -> list[str]:
    """The tiny MNIST run (tests/conftest.py) with `changes` (key=value) and the small node."""
    keyed = {line.split("=", 1)[0]: line for line in tiny_run_overrides(data_root)}
    keyed.update({key: f"{key}={value}" for key, value in changes.items()})
    return [f"out_root={tmp_path / 'outputs'}", *keyed.values(), *SMALL_NODE]


def sweep_args(name: str, iters: str, extra: list[str]) -> list[str]:
    return ["sweep", "--iters", iters, "--name", name, "--launcher", "submitit_slurm", *extra]


def job_ids(stderr: str) -> list[str]:
    """The job ids the command said it submitted (`submitted SLURM jobs 28_0 (run), ...`)."""
    found = SUBMITTED.search(stderr)
    return re.findall(r"(\S+) \([^)]*\)", found.group(1)) if found else []


def all_jobs() -> set[str]:
    """Every job of the last day in sacct but slurm_up.sh's own smoke test."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-S", "now-1days"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("|") for line in out.stdout.splitlines()]
    return {row[0] for row in rows if row[-1] != SMOKE_JOB}


def sacct_state(job: str, want: Callable[[str], bool], timeout: float = 40) -> str:
    """The job's sacct state once `want` accepts it (records reach slurmdbd asynchronously)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
            capture_output=True,
            text=True,
        )
        state = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if want(state):
            return state
        time.sleep(1)
    raise AssertionError(f"sacct says {state!r} for job {job} after {timeout} s")


def epochs_of(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def summary_of(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen, Path, Path]:
    """The command in the background, its stdout and stderr going to files."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    process = subprocess.Popen(
        [CAPSROUTE, *args],
        cwd=cwd,
        stdout=out.open("w"),
        stderr=err.open("w"),
        env={**os.environ, **WIDE},
    )
    return process, out, err


def show(label: str, text: str) -> None:
    """Echo what SLURM said (visible with -s / in the CI log), for the record."""
    print(f"--- {label}\n{text.rstrip()}")


def test_requests_the_node_cannot_meet_are_refused_before_submitting(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    extra = [f"out_root={tmp_path / 'outputs'}", *tiny_run_overrides(data_root)]
    before = all_jobs()
    result = run_cli(*sweep_args("refused", "1", extra), cwd=tmp_path)
    show("packaged request on the 2-CPU GPU-less node", result.stderr)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the SLURM request does not fit")
    assert "hydra.launcher.gpus_per_node=0" in lines[0]
    assert "hydra.launcher.cpus_per_task=2 or less" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert all_jobs() == before


def test_a_submission_sbatch_refuses_is_one_line_and_no_job(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    """What sinfo cannot tell (here a node feature no node has) sbatch refuses: one line."""
    extra = [*overrides(tmp_path, data_root), "hydra.launcher.constraint=capsroute-no-such"]
    before = all_jobs()
    result = run_cli(*sweep_args("sbatch", "1", extra), cwd=tmp_path)
    show("sbatch refusal", result.stderr)
    assert result.returncode == 1
    assert "sbatch refused the jobs, none was submitted: sbatch: error:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "1 of 1 runs did not complete" in result.stderr
    assert all_jobs() == before


def test_two_runs_complete_the_report_builds_and_a_rerun_submits_nothing(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    args = sweep_args("two", "1,3", overrides(tmp_path, data_root))
    first = run_cli(*args, cwd=tmp_path)
    show("first sweep", first.stderr)
    assert first.returncode == 0, first.stdout + first.stderr
    jobs = job_ids(first.stderr)
    assert len(jobs) == 2
    states = [sacct_state(job, lambda s: s == "COMPLETED") for job in jobs]
    show("sacct", " ".join(f"{j} {s}" for j, s in zip(jobs, states, strict=True)))
    root = tmp_path / "outputs" / "sweeps" / "two"
    for run in ("mnist/r1/s0", "mnist/r3/s0"):
        assert epochs_of(root / run) == [1, 2]
        assert summary_of(root / run)["status"] == "completed"
        assert (root / ".submitit" / jobs[run.endswith("r3/s0")]).is_dir()
    report = run_cli("report", str(root), "--format", "md,csv", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (root / "report").is_dir() and any((root / "report").iterdir())

    before = all_jobs()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "submitted SLURM jobs" not in again.stderr
    time.sleep(3)  # a job submitted by the re-run would be in sacct by now
    assert all_jobs() == before


def test_scancel_term_mid_epoch_then_a_rerun_resumes_with_the_right_rows(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    args = sweep_args(
        "term",
        "1",
        overrides(tmp_path, data_root, **{"dataset.train_size": 1024, "train.epochs": 8}),
    )
    run = tmp_path / "outputs" / "sweeps" / "term" / RUN
    process, _, err = start(args, tmp_path)
    wait_until(lambda: (run / "metrics.csv").exists() and len(epochs_of(run)) >= 2, 180, "epoch 2")
    job = job_ids(err.read_text())[0]
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    assert process.wait(timeout=120) == 1
    stderr = err.read_text()
    show("sweep stopped by scancel --signal=TERM", stderr)
    failures = [line for line in stderr.splitlines() if line.startswith(f"run {RUN}:")]
    assert len(failures) == 1 and "Traceback" not in stderr
    assert failures[0].startswith(f"run {RUN}: SLURM job {job} failed: ended without a result")
    assert "(stopped by SIGTERM" in failures[0]
    assert failures[0].endswith(f"logs: {run.parents[2] / '.submitit' / job}/")
    show("sacct", f"{job} {sacct_state(job, lambda s: s == 'FAILED')}")
    stopped = summary_of(run)
    done = stopped["epochs_completed"]
    assert stopped["status"] == "interrupted" and 2 <= done < 8
    assert epochs_of(run) == list(range(1, done + 1))
    kept = (run / "metrics.csv").read_text().splitlines()

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed_job = job_ids(again.stderr)[0]
    show("sacct", f"{resumed_job} {sacct_state(resumed_job, lambda s: s == 'COMPLETED')}")
    assert epochs_of(run) == list(range(1, 9))
    assert (run / "metrics.csv").read_text().splitlines()[: done + 1] == kept
    assert f"resuming {run} after epoch {done} of 8" in (run / "capsroute.log").read_text()
    show("epochs", f"stopped after {done}, resumed: {epochs_of(run)}")


def test_ctrl_c_cancels_the_jobs_this_command_submitted(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    args = sweep_args(
        "ctrlc",
        "1,3",
        overrides(tmp_path, data_root, **{"dataset.train_size": 1024, "train.epochs": 40}),
    )
    root = tmp_path / "outputs" / "sweeps" / "ctrlc"
    runs = [root / "mnist/r1/s0", root / "mnist/r3/s0"]
    process, out, err = start(args, tmp_path)
    wait_until(lambda: all(summary_of(r).get("epochs_completed") for r in runs), 180, "epoch 1")
    jobs = job_ids(err.read_text())
    plan = run_cli(*args, "--dry-run", cwd=tmp_path, env=WIDE)  # while the jobs run
    assert f"(SLURM job {jobs[0]}); cancel it with `scancel {jobs[0]}`" in plan.stdout
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    stderr = err.read_text()
    show("Ctrl-C on the sweep command", stderr)
    assert f"cancelled SLURM jobs {' '.join(jobs)} (submitted by this command" in stderr
    assert "Traceback" not in stderr
    states = [sacct_state(job, lambda s: s.startswith("CANCELLED")) for job in jobs]
    show("sacct", " ".join(f"{j} {s}" for j, s in zip(jobs, states, strict=True)))

    def queued() -> set[str]:  # COMPLETING jobs are listed until slurmd has cleaned up
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        return set(out.stdout.split()) & set(jobs)

    wait_until(lambda: not queued(), 60, "the cancelled jobs to leave the queue")
    for run in runs:
        assert summary_of(run)["status"] == "interrupted"
    assert "interrupted" in out.read_text()


def test_a_time_out_requeue_resumes_and_a_longer_limit_continues(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    """Time limit 2 min, USR2 60 s before it: SLURM signals 30-60 s into each attempt; one
    requeue allowed. The run cannot finish in two attempts, so it ends 'timed-out too many
    times' with its checkpoint, and a re-run with a longer limit continues it."""
    timing = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
    # far more epochs than two attempts can train, however fast the machine (~0.15-1 s each)
    epochs = 3000
    base = overrides(tmp_path, data_root, **{"dataset.train_size": 512, "train.epochs": epochs})
    args = sweep_args("timeout", "1", [*base, *timing, "hydra.launcher.max_num_timeout=1"])
    run = tmp_path / "outputs" / "sweeps" / "timeout" / RUN
    process, out, err = start(args, tmp_path)
    wait_until(lambda: "requeued" in str(summary_of(run).get("error")), 150, "the requeue")
    requeued = summary_of(run)
    show("summary.json during the requeue", f"{requeued['status']}: {requeued['error']}")
    assert requeued["status"] == "interrupted" and requeued["epochs_completed"] >= 1
    job = job_ids(err.read_text())[0]
    assert process.wait(timeout=240) == 1
    stdout, stderr = out.read_text(), err.read_text()
    show("sweep after two time-outs", stderr)
    assert "Traceback" not in stdout + stderr
    timed_out = summary_of(run)
    assert timed_out["status"] == "failed"
    assert timed_out["error"] == (
        "UncompletedJobError: Job not requeued because: timed-out too many times."
    )
    manifest = json.loads((run.parents[2] / "sweep.json").read_text())
    assert manifest["runs"][0]["error"] == timed_out["error"]
    assert timed_out["epochs_completed"] > requeued["epochs_completed"]
    log = (run / "capsroute.log").read_text()
    assert f"resuming {run} after epoch {requeued['epochs_completed']} of {epochs}" in log
    history = subprocess.run(
        ["sacct", "-n", "-P", "-D", "-X", "-o", "JobID,State", "-j", job],
        capture_output=True,
        text=True,
    ).stdout
    show("sacct -D", history)
    assert "REQUEUED" in history

    # continue: a longer limit (and, to keep the test short, 2 more epochs than it reached)
    target = timed_out["epochs_completed"] + 2
    longer = ["hydra.launcher.timeout_min=10", f"train.epochs={target}"]
    keep = [line for line in base if not line.startswith("train.epochs=")]
    again = run_cli(*sweep_args("timeout", "1", [*keep, *longer]), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert epochs_of(run) == list(range(1, target + 1))
    assert summary_of(run)["status"] == "completed"
    show(
        "epochs",
        f"requeued after {requeued['epochs_completed']}, timed out after "
        f"{timed_out['epochs_completed']}, continued to {target}",
    )


def test_a_job_pending_for_a_reason_that_never_clears_is_cancelled_and_reported(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    """The node is kept busy, so the sweep's job waits (Resources); then the partition's time
    limit drops below the job's, so it waits for PartitionTimeLimit, which never clears."""
    busy = ["-c", "2", "--mem=100", "-t", "5", "-J", "capsroute-blocker", "--wrap", "sleep 300"]
    busy = [f"--output={tmp_path / 'blocker-%j.out'}", *busy]  # not into the working directory
    blocker = subprocess.run(
        ["sbatch", "--parsable", *busy],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        sacct_state(blocker, lambda s: s == "RUNNING")
        extra = [*overrides(tmp_path, data_root), "hydra.launcher.timeout_min=10"]
        process, _, err = start(sweep_args("stuck", "1", extra), tmp_path)
        wait_until(lambda: bool(job_ids(err.read_text())), 120, "the submission")
        subprocess.run(["scontrol", "update", f"partition={PARTITION}", "MaxTime=5"], check=True)
        assert process.wait(timeout=120) == 1
    finally:
        subprocess.run(["scontrol", "update", f"partition={PARTITION}", "MaxTime=INFINITE"])
        subprocess.run(["scancel", blocker])
    stderr = err.read_text()
    show("a job that can never start", stderr)
    job = job_ids(stderr)[0]
    assert f"cancelled SLURM jobs {job} (pending with reason PartitionTimeLimit" in stderr
    assert f"run {RUN}: SLURM job {job} could never start (pending: PartitionTimeLimit)" in stderr
    assert "Traceback" not in stderr
    show("sacct", f"{job} {sacct_state(job, lambda s: s.startswith('CANCELLED'))}")


def test_without_accounting_the_sweep_refuses_before_submitting(
    cluster: None, tmp_path: Path, data_root: Path
) -> None:
    pid_file = STATE_DIR / "slurmdbd.pid"
    if not pid_file.exists():
        pytest.skip("slurmdbd was not started by slurm_up.sh; not stopping a daemon we do not own")
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "slurmdbd to stop")
        result = run_cli(*sweep_args("noacct", "1", overrides(tmp_path, data_root)), cwd=tmp_path)
        show("sweep with slurmdbd stopped", result.stderr)
    finally:
        subprocess.run(["bash", str(HERE / "slurm_up.sh")], capture_output=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: SLURM accounting is not available")
    assert "nothing was submitted" in lines[0] and "submitted SLURM jobs" not in result.stderr
    squeue = subprocess.run(["squeue", "-h", "-n", "capsroute"], capture_output=True, text=True)
    assert squeue.stdout.strip() == ""  # no sweep job (Hydra names them after the app)
