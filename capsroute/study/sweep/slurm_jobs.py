"""Following a sweep's SLURM jobs from the login node (the `submitit_slurm` launcher's wait).

Hydra's submitit launcher waits with `job.results()`: a failed job raises submitit's
70-line `UncompletedJobError` traceback and stops the sweep, Ctrl-C leaves every job running,
a job PENDING for a reason that never clears is waited on forever, and so is a job that died
while `sacct` was down. `wait_for_jobs` replaces that wait: one line per failed run (run, job
id, reason, log folder), a cancelled job for a reason that cannot clear, a deadline for jobs
that left the queue unseen, and on Ctrl-C an `scancel` of exactly the jobs this command
submitted and did not see finish.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsroute.study.sweep.slurm import SlurmError, slurm_command

POLL_S = 2.0
QUEUE_CHECK_S = 30.0  # how often squeue is asked about pending reasons and vanished jobs
RELEASE_WAIT_S = 30.0  # after Ctrl-C: how long the cancelled jobs get to save and unlock
MISSING_CHECKS = 2  # squeue misses a job this many times in a row (and sacct fails): it is lost

# Pending reasons that never clear by waiting: the job can never start as submitted.
# (`man squeue`, JOB REASON CODES; the per-job QOS/association limits are the `*PerJob*` ones.)
UNCLEARABLE_REASONS = frozenset(
    {
        "BadConstraints",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "InvalidAccount",
        "InvalidQOS",
        "DependencyNeverSatisfied",
        "AccountNotAllowed",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxGRESPerJob",
        "QOSMaxMemoryPerJob",
        "QOSMaxNodePerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
        "AssocMaxCpuPerJobLimit",
        "AssocMaxGRESPerJob",
        "AssocMaxMemPerJob",
        "AssocMaxNodePerJobLimit",
        "AssocMaxWallDurationPerJobLimit",
    }
)


@dataclass
class SubmittedRun:
    """One submitted job and the run it trains (`label`: its directory inside the sweep)."""

    job: Any  # submitit.Job
    label: str
    log_dir: Path
    run_dir: Path

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)


def say(line: str) -> None:
    """A line for the user on stderr (Hydra owns the login process's logging)."""
    sys.stderr.write(line.rstrip() + "\n")
    sys.stderr.flush()


def submitted_line(runs: Sequence[SubmittedRun]) -> str:
    """Which job trains which run, and where their logs go."""
    ids = ", ".join(f"{run.job_id} ({run.label})" for run in runs)
    folder = runs[0].log_dir.parent if runs else "."
    return f"submitted SLURM jobs {ids}; logs: {folder}/<job id>/"


def job_failure_reason(text: str) -> str:
    """The one fact in a submitit `UncompletedJobError`/`FailedJobError` message.

    A job that raised: its exception's last line (`ValueError: ...`). A job that ended
    without a result (cancelled, killed, out of memory, node failure): its SLURM state.
    """
    trace = re.search(r"failed during processing with trace:\s*-+\n(.*?)\n\s*-+", text, re.S)
    if trace:
        lines = [line.strip() for line in trace.group(1).splitlines() if line.strip()]
        if lines:
            return re.sub(r"^(?:\w+\.)+(\w+(?:Error|Exception)?:)", r"\1", lines[-1])
    state = re.search(r"has not produced any output \(state: ([^)]*)\)", text)
    if state:
        return f"ended without a result (state {state.group(1).strip()})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def failure_line(run: SubmittedRun, reason: str, run_note: str = "") -> str:
    """`run R: SLURM job J failed: REASON[; the run's own record]; logs: DIR/`."""
    note = f"; run {run_note}" if run_note else ""
    return f"run {run.label}: SLURM job {run.job_id} {reason}{note}; logs: {run.log_dir}/"


def run_note(run_dir: Path) -> str:
    """What the run's own `summary.json` says, when it did not complete (else '')."""
    from capsroute.run import rundir

    summary = rundir.read_summary(run_dir)
    status = summary.get("status")
    if not status or status == rundir.STATUS_COMPLETED:
        return ""
    error = summary.get("error")
    return f"{status} after epoch {summary.get('epochs_completed', 0)}" + (
        f" ({error})" if error else ""
    )


def outcome(run: SubmittedRun) -> str | None:
    """None when the job returned, else its one-line failure."""
    error = run.job.exception()
    if error is None:
        return None
    return failure_line(run, f"failed: {job_failure_reason(str(error))}", run_note(run.run_dir))


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """`squeue -h -r -t all -o '%i|%T|%r'` -> job id -> (state, reason)."""
    found = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            found[fields[0]] = (fields[1], fields[2])
    return found


def queue_states(runs: Sequence[SubmittedRun]) -> dict[str, tuple[str, str]]:
    """The jobs' states and pending reasons as slurmctld sees them now."""
    arrays = sorted({run.job_id.split("_")[0] for run in runs})
    text = slurm_command(
        ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r"]
    )
    return parse_squeue(text)


def cancel_jobs(job_ids: Sequence[str], why: str) -> bool:
    """`scancel` the given jobs; says which (or how to do it by hand if that failed)."""
    if not job_ids:
        return True
    try:
        slurm_command(["scancel", *job_ids])
    except SlurmError as exc:
        ids = " ".join(job_ids)
        say(f"could not cancel SLURM jobs {ids} ({exc}): run scancel {ids}")
        return False
    say(f"cancelled SLURM jobs {' '.join(job_ids)} ({why})")
    return True


class JobWatch:
    """The state of the wait: which jobs ended, and how (a failure line, or None)."""

    def __init__(self, runs: Sequence[SubmittedRun], accounting: Callable[[], bool]) -> None:
        self.runs = list(runs)
        self.ended: dict[str, str | None] = {}
        self.missing: dict[str, int] = {}
        self.accounting = accounting

    def open_runs(self) -> list[SubmittedRun]:
        return [run for run in self.runs if run.job_id not in self.ended]

    def end(self, run: SubmittedRun, failure: str | None) -> None:
        self.ended[run.job_id] = failure
        if failure:
            say(failure)

    def poll(self) -> None:
        for run in self.open_runs():
            if run.job.done():
                self.end(run, outcome(run))

    def check_queue(self) -> None:
        """Cancel jobs that can never start; give up on jobs gone unseen while sacct is down."""
        open_runs = self.open_runs()
        if not open_runs:
            return
        try:
            states = queue_states(open_runs)
        except SlurmError as exc:
            say(f"warning: could not ask squeue about the jobs ({exc}); still waiting")
            return
        for run in open_runs:
            state, reason = states.get(run.job_id, ("", ""))
            if state == "PENDING" and reason in UNCLEARABLE_REASONS:
                cancel_jobs([run.job_id], f"pending with reason {reason}, which never clears")
                self.end(run, failure_line(run, f"could never start (pending: {reason})"))
            elif state:
                self.missing.pop(run.job_id, None)
            else:
                self.missing[run.job_id] = self.missing.get(run.job_id, 0) + 1
                gone = self.missing[run.job_id] >= MISSING_CHECKS and not run.job.done()
                if gone and not self.accounting():
                    self.end(
                        run,
                        failure_line(
                            run,
                            "left the queue without a result, and sacct cannot say why",
                            run_note(run.run_dir),
                        ),
                    )


def accounting_works() -> bool:
    try:
        slurm_command(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now"])
    except SlurmError:
        return False
    return True


def wait_for_jobs(
    runs: Sequence[SubmittedRun],
    poll_s: float = POLL_S,
    queue_check_s: float = QUEUE_CHECK_S,
    accounting: Callable[[], bool] = accounting_works,
) -> dict[str, str | None]:
    """Wait until every job ended; job id -> None (returned) or its failure line.

    Ctrl-C cancels the jobs still open (they were submitted by this command) and re-raises.
    """
    watch = JobWatch(runs, accounting)
    last_check = time.monotonic()
    try:
        while watch.open_runs():
            watch.poll()
            if watch.open_runs() and time.monotonic() - last_check >= queue_check_s:
                watch.check_queue()
                last_check = time.monotonic()
            if watch.open_runs():
                time.sleep(poll_s)
    except KeyboardInterrupt:
        open_runs = watch.open_runs()
        if cancel_jobs(
            [run.job_id for run in open_runs],
            "submitted by this command; their runs resume on a re-run",
        ):
            wait_released(open_runs)
        raise
    return watch.ended


def wait_released(runs: Sequence[SubmittedRun], timeout_s: float = RELEASE_WAIT_S) -> None:
    """Give cancelled jobs a moment to save and unlock their runs, so that the final table
    shows them interrupted rather than locked (a second Ctrl-C stops waiting)."""
    from capsroute.run import rundir

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(rundir.lock_holder(run.run_dir) is None for run in runs):
            return
        time.sleep(POLL_S / 4)
