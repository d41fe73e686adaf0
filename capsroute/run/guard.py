"""What an existing run directory allows, decided before anything is written into it.

A run's record (config, metrics, summary, checkpoint) changes only when training changes it.
`check_existing_run` reads a run directory without modifying it and says whether the command
may train there: a completed run is never retrained or re-described, a run trained with another
config is refused, and a completed run that lost its checkpoint is refused instead of being
silently retrained from scratch. `capsroute train` calls it before Hydra touches the directory,
and the training loop calls it again under the run's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsroute.config import Config, config_to_dict
from capsroute.config_history import resume_conflicts
from capsroute.errors import RunDirError
from capsroute.run import rundir


@dataclass(frozen=True)
class ExistingRun:
    """What is already in a run directory: `done` when nothing is left to train."""

    has_record: bool  # summary.json or checkpoint.pt exists: Hydra must not write into it
    done: bool
    message: str = ""


def check_existing_run(config: Config, run_dir: Path, check_lock: bool = True) -> ExistingRun:
    """Refuse (`RunDirError`, exit 2) what would change a run's record without training it.

    Reads only; `check_lock=False` when the caller already holds the run's lock.
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / rundir.CHECKPOINT_FILE
    summary_path = run_dir / rundir.SUMMARY_FILE
    has_record = checkpoint.exists() or summary_path.exists()
    if not has_record:
        return ExistingRun(False, False)
    if check_lock:
        holder = rundir.lock_holder(run_dir)
        if holder is not None:
            raise RunDirError(
                f"run directory {run_dir} is in use by {holder}; wait for it to finish "
                "or pick another run_name"
            )
    summary = rundir.read_checked_summary(run_dir)
    _check_same_config(summary, config, run_dir)
    if summary.get("status") != rundir.STATUS_COMPLETED:
        return ExistingRun(True, False)
    done = _completed_epochs(summary)
    if not checkpoint.exists():
        raise RunDirError(
            f"{run_dir} is a completed run ({done} epochs) whose {rundir.CHECKPOINT_FILE} is "
            "missing; restore it, or move the run directory away to train it again"
        )
    if done >= config.train.epochs or summary.get("stopped_early"):
        asked = f" (asked for {config.train.epochs})" if done > config.train.epochs else ""
        return ExistingRun(
            True, True, f"{run_dir} already completed {done} epochs{asked}; nothing to train"
        )
    return ExistingRun(True, False)


def _completed_epochs(summary: dict[str, Any]) -> int:
    done = summary.get("epochs_completed")
    return done if isinstance(done, int) and not isinstance(done, bool) and done >= 0 else 0


def _check_same_config(summary: dict[str, Any], config: Config, run_dir: Path) -> None:
    """A run directory holds one config's run; another config goes to another run_name."""
    saved = summary.get("config")
    if not isinstance(saved, dict) or summary.get("status") == rundir.STATUS_FAILED:
        return  # failed before training: nothing of it is kept, a new config may start there
    changed = resume_conflicts(saved, config_to_dict(config))
    if changed:
        raise RunDirError(
            f"{run_dir} holds a run with a different config ({'; '.join(changed[:3])}); "
            "use another run_name=... for the new config, or move the old run away"
        )
