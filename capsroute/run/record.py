"""The run's record: `TrainState` (what a resume needs) and `summary.json` (status and headline
numbers), written atomically by the training loop and, for runs that fail before training, by
the sweep task. A completed run's summary is never overwritten by a failure.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import capsroute
from capsroute.config import Config, config_to_dict
from capsroute.data.batches import Splits
from capsroute.device import device_description
from capsroute.errors import CapsrouteError, RunDirError, one_line
from capsroute.io import utc_now, write_json
from capsroute.run import rundir
from capsroute.run.selection import headline

log = logging.getLogger("capsroute")


@dataclass
class TrainState:
    """What a resume needs beyond the weights: finished epochs and the rows written so far."""

    epoch: int
    step: int
    metrics: list[dict[str, Any]]
    routing: list[dict[str, Any]]
    wall_seconds: float
    skipped_steps: int = 0  # steps whose loss was not finite (train.nonfinite=skip)


def new_summary(
    config: Config, run_dir: Path, model: torch.nn.Module, device: torch.device, splits: Splits
) -> dict[str, Any]:
    """The static part of `summary.json`: what ran, where, on what."""
    import torchvision

    return {
        "status": rundir.STATUS_RUNNING,
        "run_dir": str(run_dir),
        "dataset": config.dataset.name,
        "iterations": config.routing.iterations,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "parameters": model.parameter_counts(),
        "data_sizes": {
            "train": len(splits.train),
            "train_eval": len(splits.train_eval),
            "test": len(splits.test),
        },
        "device": str(device),
        "device_name": device_description(device),
        "precision": config.train.precision,
        "versions": {
            "capsroute": capsroute.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "started_at": utc_now(),
        "config": config_to_dict(config),
    }


def write_summary(
    summary: dict[str, Any],
    state: TrainState,
    status: str,
    run_dir: Path,
    error: str | None = None,
) -> dict[str, Any]:
    """Fill the numbers from `state` into `summary` and write `summary.json` atomically."""
    summary.update(status=status, updated_at=utc_now(), epochs_completed=state.epoch)
    summary["wall_seconds"] = state.wall_seconds
    summary["skipped_steps"] = state.skipped_steps
    summary["error"] = error
    if state.metrics:
        summary.update(headline(state.metrics))  # one definition of every "best" (selection)
        patience = summary.get("config", {}).get("train", {}).get("early_stopping_patience")
        summary["stopped_early"] = state.epoch < summary.get("epochs", 0) and stops_early(
            state.metrics, patience
        )
    write_json(run_dir / rundir.SUMMARY_FILE, summary)
    return summary


def record_stop(
    summary: dict[str, Any], state: TrainState, status: str, run_dir: Path, error: str
) -> dict[str, Any]:
    """Mark the run interrupted or failed, without masking the original error if even that
    write fails (e.g. on a full disk)."""
    try:
        write_summary(summary, state, status, run_dir, error=error)
    except (OSError, CapsrouteError) as exc:
        log.error("could not record status %s in %s: %s", status, run_dir, one_line(exc))
    return summary


def exit_note(exc: SystemExit, epoch: int) -> str:
    """Why a run stopped through `SystemExit`: in a SLURM job, submitit's time-out (or
    pre-emption) handler has just requeued the job and exits; the requeued job resumes."""
    job = rundir.slurm_job_id()
    if job:
        return (
            f"requeued: SLURM job {job} exited (SystemExit {exc.code}) after epoch {epoch} "
            "for a time-out or pre-emption requeue; it resumes from the checkpoint when the "
            "job restarts"
        )
    return f"exited (SystemExit {exc.code}) after epoch {epoch}; run the same command to resume"


def record_not_started(config: Config, run_dir: Path, status: str, error: str) -> None:
    """A summary for a run stopped before its first record (e.g. SIGTERM during start-up);
    a run that already has a summary keeps it untouched."""
    if (run_dir / rundir.SUMMARY_FILE).exists():
        return
    summary = {
        "status": status,
        "run_dir": str(run_dir),
        "dataset": config.dataset.name,
        "iterations": config.routing.iterations,
        "seed": config.seed,
        "epochs": config.train.epochs,
        "epochs_completed": 0,
        "started_at": utc_now(),
        "updated_at": utc_now(),
        "error": error,
        "config": config_to_dict(config),
    }
    try:
        write_json(run_dir / rundir.SUMMARY_FILE, summary)
    except (OSError, CapsrouteError) as exc:
        log.error("could not record status %s in %s: %s", status, run_dir, one_line(exc))


def stops_early(metrics: list[dict[str, Any]], patience: int | None) -> bool:
    """Whether `patience` epochs have passed since the first highest validation accuracy.

    Decided from the recorded rows alone, so a resumed or re-run early-stopped run stops at the
    same epoch instead of training on.
    """
    if patience is None or not metrics or metrics[-1].get("val_acc") is None:
        return False
    best = max(range(len(metrics)), key=lambda i: (metrics[i]["val_acc"], -i))
    return len(metrics) - 1 - best >= patience


def finish_summary(
    summary: dict[str, Any], state: TrainState, status: str, run_dir: Path
) -> dict[str, Any]:
    summary["finished_at"] = utc_now()
    return write_summary(summary, state, status, run_dir)


def record_failure(run_dir: Path, cfg: DictConfig, exc: BaseException) -> dict[str, Any]:
    """Mark the run failed in its `summary.json`, with the error, under the run's lock.

    `train_run` already does this for failures during training; this covers the ones before
    it writes a summary (missing data, a bad checkpoint, a config error). A completed run's
    summary is never overwritten, and a run locked by another process is left alone.
    """
    error = one_line(exc)
    try:
        with rundir.run_lock(run_dir):
            summary = rundir.read_summary(run_dir)
            if summary.get("status") == rundir.STATUS_COMPLETED:
                return {"run_dir": str(run_dir), "status": rundir.STATUS_FAILED, "error": error}
            if not (summary.get("status") == rundir.STATUS_FAILED and summary.get("error")):
                summary = {**failure_summary(run_dir, cfg), **summary}
                summary.update(status=rundir.STATUS_FAILED, error=error, updated_at=utc_now())
                write_json(run_dir / rundir.SUMMARY_FILE, summary)
    except (RunDirError, OSError) as lock_exc:
        log.error("%s: could not record the failure: %s", run_dir, one_line(lock_exc))
    return {"run_dir": str(run_dir), "status": rundir.STATUS_FAILED, "error": error}


def failure_summary(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """The fields a run's summary has even when it failed before training started."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    return {
        "status": rundir.STATUS_FAILED,
        "run_dir": str(run_dir),
        "dataset": OmegaConf.select(cfg, "dataset.name", default=None),
        "iterations": OmegaConf.select(cfg, "routing.iterations", default=None),
        "seed": OmegaConf.select(cfg, "seed", default=None),
        "epochs": OmegaConf.select(cfg, "train.epochs", default=None),
        "epochs_completed": 0,
        "started_at": utc_now(),
        "config": plain,
    }


def keep_saved(state: TrainState, epoch: int) -> None:
    """Forget an epoch that was counted but whose checkpoint was never written (an exit that
    landed between the two, e.g. submitit's requeue on SIGUSR2), so the summary never claims
    more epochs than the checkpoint a resume starts from."""
    if state.epoch > epoch:
        state.epoch = epoch
        state.metrics = [row for row in state.metrics if row["epoch"] <= epoch]
        state.routing = [row for row in state.routing if row["epoch"] <= epoch]
