"""The run directory on disk: every file name and column list of a run, its lock and statuses.

Layout (written as the run goes): `.hydra/` (Hydra's config and overrides as of the first start;
the config the run trained with is `summary.json`'s `config`, which only training writes),
`metrics.csv` (one row per epoch), `routing.csv` (one row per epoch and routing iteration),
`summary.json` (status and headline numbers), `checkpoint.pt` and `capsroute.log`.
Every file is replaced atomically (`capsroute.io`), so a crash at any moment leaves either the
old or the new version, never a half-written one.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capsroute.errors import RunDirError
from capsroute.io import os_reason, read_json

METRICS_FILE = "metrics.csv"
ROUTING_FILE = "routing.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
# `capsroute evaluate` (a trained run at other r) and `capsroute ensemble` (a folder of runs)
EVAL_ITERS_FILE = "eval_iters.csv"
EVAL_ROUTING_FILE = "eval_routing.csv"
# `capsroute evaluate --dataset`: the run scored on another test set of its input shape (affNIST,
# its approximation, ...), kept apart from eval_iters.csv so the own-test results are untouched
EVAL_CROSS_FILE = "eval_cross.csv"
ENSEMBLE_FILE = "ensemble.json"
# experiment trackers (`logger=...`): each tracker's run id, so a resume continues that run;
# TensorBoard's event files and W&B's offline runs live in these folders of the run directory
TRACKERS_FILE = "trackers.json"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B itself names the folder it makes in the run directory
# `capsroute sweep` puts sweep NAME's runs under <out_root>/sweeps/NAME/
SWEEPS_DIR = "sweeps"

# metrics.csv: one row per epoch, in this column order.
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_margin_loss",
    "train_recon_loss",
    "train_acc",
    "train_eval_acc",
    "train_eval_loss",
    "test_acc",
    "test_loss",
    "test_margin_loss",
    "test_recon_loss",
    "val_acc",
    "val_loss",
    "val_margin_loss",
    "lr",
    "epoch_seconds",
    "images_per_s",
    "eval_seconds",
)
# routing.csv: one row per epoch and routing iteration, measured on `split` (val when the run
# has a validation split, else test). Runs written before the polarisation, flip and weighted
# diagnostics existed have only the required columns (and measured on test). delta_b is empty at
# the last iteration: that update is never applied (older runs recorded it).
ROUTING_REQUIRED = ("epoch", "iteration", "delta_b", "entropy", "max_c")
WEIGHTED_DIAGNOSTICS = ("entropy_w", "max_c_w", "polarised_w", "agreement", "agreement_w")
ROUTING_COLUMNS = (*ROUTING_REQUIRED, "polarised", "flip", *WEIGHTED_DIAGNOSTICS, "split")
# eval_iters.csv: one row per split x mode x eval r; eval_routing.csv: per routing iteration.
# The report needs the required columns only.
EVAL_COLUMNS = (
    "epoch",
    "split",
    "mode",
    "train_r",
    "eval_r",
    "images",
    "accuracy",
    "loss",
    "margin_loss",
    "recon_loss",
    "entropy",
    "max_c",
    "polarised",
    "flip_first",
    "recorded_acc",
    "seconds",
)
EVAL_ROUTING_COLUMNS = (
    "epoch",
    "split",
    "mode",
    "eval_r",
    "iteration",
    "delta_b",
    "entropy",
    "max_c",
    "polarised",
    "flip",
    *WEIGHTED_DIAGNOSTICS,
)
EVAL_REQUIRED = ("epoch", "eval_r", "accuracy")
# eval_cross.csv: one row per other dataset x mode x eval r. `own_test_acc` is the accuracy the
# run recorded on its own test set at the same epoch (filled at the run's own mode and r only).
EVAL_CROSS_COLUMNS = (
    "epoch",
    "dataset",
    "mode",
    "train_r",
    "eval_r",
    "images",
    "accuracy",
    "loss",
    "margin_loss",
    "recon_loss",
    "own_test_acc",
    "seconds",
)

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"


def ensure_writable(run_dir: Path) -> None:
    """Create `run_dir` and prove it is writable, with a one-line error if it is not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = os_reason(exc)
        raise RunDirError(
            f"cannot write to output directory {run_dir} ({reason}); "
            "choose another with out_root=DIR or hydra.run.dir=DIR"
        ) from exc


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` so that two processes never train into it at once.

    The lock is an `flock` on `run_dir/.lock`: the kernel releases it when the holder exits,
    even after SIGKILL, so a stale lock never blocks a resume.
    """
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"run directory {run_dir} is {in_use_by(holder)}, or pick another run_name"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(holder_text() + "\n")
        handle.flush()
        yield
    finally:
        handle.close()


def slurm_job_id() -> str | None:
    """This process's SLURM job as `scancel` and submitit name it (`123_4` for an array task)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


SLURM_HOLDER = re.compile(r"\(SLURM job (\S+)\)")


def holder_text() -> str:
    """What the lock file says about its holder: `pid N on HOST[ (SLURM job ID)]`."""
    job = slurm_job_id()
    return f"pid {os.getpid()} on {os.uname().nodename}" + (f" (SLURM job {job})" if job else "")


def in_use_by(holder: str) -> str:
    """`in use by HOLDER; <the fix>`: for a SLURM job, `scancel ID` or waiting for it."""
    job = SLURM_HOLDER.search(holder)
    if job:
        return f"in use by {holder}; cancel it with `scancel {job.group(1)}` or wait for it to end"
    return f"in use by {holder}; wait for it to finish"


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's `summary.json`, or {} when it is missing or unreadable."""
    try:
        return read_json(run_dir / SUMMARY_FILE)
    except (OSError, ValueError):
        return {}


STATUSES = (STATUS_RUNNING, STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED)


def summary_problem(summary: dict[str, Any]) -> str | None:
    """What makes a `summary.json` implausible (wrong types, accuracies outside [0, 1],
    non-finite numbers), or None. Only training writes it, so any of these means damage."""
    if summary.get("status") not in STATUSES:
        return f"has status {summary.get('status')!r}"
    for key in ("epochs_completed", "epochs"):
        value = summary.get(key)
        if value is not None and not (_is_int(value) and value >= 0):
            return f"has {key} {value!r}, not a count"
    for key in ("final_test_acc", "best_test_acc", "final_train_eval_acc", "test_acc_at_best"):
        value = summary.get(key)
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            return f"has {key} {value!r}, not an accuracy in [0, 1]"
    if "config" in summary and not isinstance(summary["config"], dict):
        return "has a config that is not a mapping"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_checked_summary(run_dir: Path) -> dict[str, Any]:
    """The run's `summary.json` ({} when there is none); `RunDirError` naming the file and the
    fix when it is unreadable or implausible, so no command acts on a damaged record."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return {}
    try:
        summary = read_json(path)
        problem = summary_problem(summary)
    except (OSError, ValueError) as exc:
        summary, problem = {}, f"is unreadable ({type(exc).__name__})"
    if problem:
        raise RunDirError(
            f"{path} {problem}: the file is damaged; restore it, or move the run directory away"
        )
    return summary


def lock_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s lock (see `run_lock`), or None; opens the file read-only."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return path.read_text(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return None


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory (a folder holding summary.json or metrics.csv) at or below `paths`,
    sorted, without duplicates; hidden folders (`.hydra`, `.submitit`) are not searched."""
    found: set[Path] = set()
    for path in paths:
        found.update(_walk_runs(Path(path).resolve()))
    return sorted(found)


def _walk_runs(top: Path) -> Iterator[Path]:
    for folder, subdirs, files in os.walk(top):
        if SUMMARY_FILE in files or METRICS_FILE in files:
            subdirs.clear()  # runs do not nest
            yield Path(folder)
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
