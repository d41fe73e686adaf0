"""The Hydra task of a sweep: runs inside the launcher (this process, a joblib worker or a
SLURM job). A failed run is recorded in its `summary.json`, never raised, so the sweep goes on;
Ctrl-C and SIGTERM stop the whole sweep and leave the run resumable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from capsroute.config import Config, to_config
from capsroute.errors import one_line
from capsroute.run.record import record_failure

log = logging.getLogger("capsroute")


def sweep_task(cfg: DictConfig) -> dict[str, Any]:
    """Train one run of the sweep; a failure is recorded, never raised (the sweep goes on).

    Ctrl-C (and SIGTERM) stop the whole sweep instead: the run is saved as interrupted and a
    re-run resumes it.
    """
    from capsroute.run.train import InterruptedRunError, train_run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    config: Config | None = None
    try:
        config = place_job(to_config(cfg), hydra_cfg)
        summary = train_run(config, run_dir)
    except InterruptedRunError as exc:
        raise KeyboardInterrupt(str(exc)) from exc
    except Exception as exc:
        log.error("%s: failed: %s", run_dir, one_line(exc))
        return record_failure(run_dir, cfg, exc)
    log.info(
        "%s: %s, final test accuracy %.2f%%",
        run_dir,
        summary["status"],
        100 * summary.get("final_test_acc", float("nan")),
    )
    return {"run_dir": str(run_dir), "status": summary["status"]}


def place_job(config: Config, hydra_cfg: DictConfig) -> Config:
    """Spread parallel jobs over GPUs (by job number) and split CPU cores between them.

    Only fills in what the user left open: `device=auto` and an unset `train.threads` (the
    cores split between parallel jobs, GPU jobs too: K jobs packed on one GPU must not each
    start a thread per core). Both keys may differ between attempts without blocking a resume.
    """
    parallel = parallel_jobs(hydra_cfg)
    job_num = int(OmegaConf.select(hydra_cfg, "job.num", default=0) or 0)
    gpus = visible_gpus() if config.device == "auto" else 0
    if config.device == "auto" and parallel > 1 and gpus > 1:
        config.device = f"cuda:{job_num % gpus}"
    if config.train.threads is None:
        threads = cpu_threads_per_job(parallel)
        if threads:
            config.train.threads = threads
    return config


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many runs of this sweep run at once on this machine (1 for the basic launcher)."""
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if target.endswith("JoblibLauncher"):
        n_jobs = int(OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1) or 1)
        return n_jobs if n_jobs > 0 else max(1, _cores() + 1 + n_jobs)
    if target.endswith("LocalLauncher"):
        return int(OmegaConf.select(hydra_cfg, "sweeper.max_batch_size", default=1) or 1)
    return 1


def cpu_threads_per_job(parallel: int) -> int | None:
    """Torch threads for a CPU job: SLURM's allocation, else the cores split between jobs."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        return int(slurm)
    if parallel > 1:
        return max(1, _cores() // parallel)
    return None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
