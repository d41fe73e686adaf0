"""Planning a sweep: every run of the grid, its directory and its state, before anything runs.

Composes and validates every run's config (bad input fails before anything is written) and
classifies each run directory as done / resume / new / locked / conflict, reading it without
changing anything. `pending_jobs` is what the resumable sweeper plugin launches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf

from capsroute import hydra_app
from capsroute.config import config_to_dict, register_schema, to_config
from capsroute.config_history import resume_conflicts
from capsroute.errors import ConfigError, RunDirError
from capsroute.logger_config import require_extras
from capsroute.nn import check_model_fits
from capsroute.run import rundir
from capsroute.study.sweep.options import (
    AXIS_KEYS,
    SweepRequest,
    build_overrides,
    check_name,
    default_name,
    parse_overrides,
    register_slug_resolver,
)

log = logging.getLogger("capsroute")


STATE_DONE, STATE_RESUME, STATE_NEW, STATE_LOCKED = "done", "resume", "new", "locked"


STATE_CONFLICT = "conflict"  # completed, but with another config: never silently reused


@dataclass
class PlannedRun:
    """One point of the grid."""

    overrides: list[str]
    run_dir: Path
    state: str
    note: str = ""
    dataset: str = ""
    iterations: int = 0
    seed: int = 0
    epochs: int = 0


@dataclass
class SweepPlan:
    """The whole sweep: its root, the multirun's overrides and the runs."""

    name: str
    root: Path
    overrides: list[str]
    grid: dict[str, list[str]]
    runs: list[PlannedRun]
    launcher: dict[str, Any] = field(default_factory=dict)  # `hydra.launcher`, unresolved

    def count(self, state: str) -> int:
        return sum(run.state == state for run in self.runs)


def expand_jobs(overrides: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Split into (hydra overrides, one task-override list per run), as Hydra's sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides)
    hydra_lines = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o for o in parsed if not o.is_hydra_override()]
    for override in task:
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line}: only lists, range() and glob() sweeps are supported"
            )
    return hydra_lines, BasicSweeper.split_arguments(task, None)[0]


def grid_of(overrides: Sequence[str]) -> dict[str, list[str]]:
    """The axes and their values, for the manifest."""
    grid: dict[str, list[str]] = {}
    for o in parse_overrides(overrides):
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            grid[o.key_or_group] = list(o.sweep_string_iterator())
        elif o.key_or_group in AXIS_KEYS:
            grid[o.key_or_group] = [o.get_value_element_as_str()]
    return grid


def plan_sweep(request: SweepRequest) -> SweepPlan:
    """Validate the request and plan every run; raises `ConfigError` on bad input."""
    name = check_name(request.name) if request.name else default_name()
    register_sweeper()
    register_slug_resolver()
    overrides = build_overrides(request, name)
    hydra_lines, jobs = expand_jobs(overrides)
    configs = compose_jobs(hydra_lines, jobs, request.config_dir)
    runs = [plan_run(job, cfg) for job, cfg in zip(jobs, configs, strict=True)]
    check_unique_dirs(runs)
    root = sweep_root(configs[0])
    if request.name is None and not request.dry_run:
        name, root = claim_name(root)
        if name != root.name:  # pragma: no cover - a second sweep started in the same second
            return plan_sweep(_renamed(request, name))
    launcher = OmegaConf.to_container(configs[0].hydra.launcher, resolve=False)
    return SweepPlan(name, root, overrides, grid_of(overrides), runs, launcher)  # type: ignore[arg-type]


def _renamed(request: SweepRequest, name: str) -> SweepRequest:
    return SweepRequest(**{**vars(request), "name": name})


def claim_name(root: Path) -> tuple[str, Path]:
    """Create the sweep root of a default-named sweep; add a suffix if it already exists."""
    candidate = root
    for suffix in range(1, 100):
        try:
            candidate.mkdir(parents=True)
            return candidate.name, candidate
        except FileExistsError:
            candidate = root.with_name(f"{root.name}-{suffix}")
    raise RunDirError(f"cannot find a free sweep name next to {root}")


def compose_jobs(
    hydra_lines: Sequence[str], jobs: Sequence[Sequence[str]], config_dir: Path | None
) -> list[DictConfig]:
    """Compose (with the Hydra node) and validate every run's config; errors name the run."""
    register_schema()
    GlobalHydra.instance().clear()
    extra = hydra_app.searchpath_overrides(config_dir)
    composed: list[DictConfig] = []
    try:
        with initialize_config_module(config_module=hydra_app.CONFIG_MODULE, version_base="1.3"):
            for job in jobs:
                try:
                    cfg = compose(
                        hydra_app.CONFIG_NAME,
                        overrides=[*hydra_lines, *job, *extra],
                        return_hydra_config=True,
                    )
                    require_extras(to_config(cfg).logger)
                    hydra_app.check_no_code(cfg.hydra, "hydra.")
                    check_model_fits(to_config(cfg))
                except ConfigError as exc:
                    raise ConfigError(f"run {' '.join(job)}: {exc}") from exc
                except Exception as exc:
                    message = hydra_app.describe_compose_error(exc)
                    raise ConfigError(
                        message if len(jobs) == 1 else f"run {' '.join(job)}: {message}"
                    ) from exc
                composed.append(cfg)
    finally:
        GlobalHydra.instance().clear()
    return composed


def resolve_hydra_key(cfg: DictConfig, key: str) -> str:
    """Resolve a `hydra.*` value that may use `${hydra:...}`, as Hydra does inside a job."""
    setup_globals()
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        return str(OmegaConf.select(cfg, key))
    finally:
        instance.cfg = saved


def sweep_root(cfg: DictConfig) -> Path:
    return Path(resolve_hydra_key(cfg, "hydra.sweep.dir")).resolve()


def run_dir_of(cfg: DictConfig) -> Path:
    """The run directory Hydra's launcher gives this job: sweep dir / subdir (absolute)."""
    return sweep_root(cfg) / resolve_hydra_key(cfg, "hydra.sweep.subdir")


def plan_run(job: Sequence[str], cfg: DictConfig) -> PlannedRun:
    run_dir = run_dir_of(cfg)
    epochs = int(cfg.train.epochs)
    state, note = run_state(run_dir, epochs)
    if state == STATE_DONE:
        note = config_conflict(rundir.read_summary(run_dir), cfg)
        state = STATE_CONFLICT if note else state
    return PlannedRun(
        overrides=list(job),
        run_dir=run_dir,
        state=state,
        note=note,
        dataset=str(cfg.dataset.name),
        iterations=int(cfg.routing.iterations),
        seed=int(cfg.seed),
        epochs=epochs,
    )


def config_conflict(summary: dict[str, Any], cfg: DictConfig) -> str:
    """Why a completed run does not match the planned config ('' when it does).

    Keys that may change between attempts (epochs, device, paths, ...) are ignored, as in
    `capsroute.run.train.check_resumable`; anything else means another sweep used this name.
    """
    saved = summary.get("config")
    if not isinstance(saved, dict):
        return ""
    changed = resume_conflicts(saved, config_to_dict(to_config(cfg)))
    if not changed:
        return ""
    return f"completed with another config ({'; '.join(changed[:2])}); use another --name"


def check_unique_dirs(runs: Sequence[PlannedRun]) -> None:
    seen: dict[Path, PlannedRun] = {}
    for run in runs:
        if run.run_dir in seen:
            raise ConfigError(
                f"runs '{' '.join(seen[run.run_dir].overrides)}' and '{' '.join(run.overrides)}' "
                f"would share {run.run_dir}; remove the duplicate value or set hydra.sweep.subdir"
            )
        seen[run.run_dir] = run


def run_state(run_dir: Path, epochs: int) -> tuple[str, str]:
    """done / resume / new / locked, read without modifying anything in `run_dir`."""
    holder = rundir.lock_holder(run_dir)
    if holder is not None:
        return STATE_LOCKED, rundir.in_use_by(holder)
    summary = rundir.read_checked_summary(run_dir)  # a damaged one stops the plan, named
    done = int(summary.get("epochs_completed") or 0)
    if summary.get("status") == rundir.STATUS_COMPLETED and (
        done >= epochs or summary.get("stopped_early")
    ):
        return STATE_DONE, ""
    if (run_dir / rundir.CHECKPOINT_FILE).exists():
        return STATE_RESUME, f"from epoch {done}/{epochs}" if summary else "from checkpoint"
    if summary.get("status") == rundir.STATUS_FAILED:
        return STATE_NEW, "retry after failure"
    return STATE_NEW, ""


def pending_jobs(
    jobs: Sequence[Sequence[str]], compose_job: Callable[[list[str]], DictConfig]
) -> list[list[str]]:
    """The jobs whose run is neither complete nor locked (used by the resumable sweeper)."""
    todo = []
    for job in jobs:
        run = plan_run(job, compose_job(list(job)))
        if run.state in (STATE_RESUME, STATE_NEW):
            todo.append(list(job))
        else:
            log.info("skipping %s (%s%s)", run.run_dir, run.state, f": {run.note}" * bool(run.note))
    return todo


def register_sweeper() -> None:
    """Make `hydra/sweeper=resumable` instantiable (Hydra's public `Plugins.register`).

    Hydra's first plugin scan re-executes already imported plugin modules, which would
    replace `BasicSweeper` under our subclass; so the scan runs before our module is imported.
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    from hydra_plugins.capsroute_sweeper import ResumableSweeper

    plugins.register(ResumableSweeper)
    try:  # the SLURM launcher needs the optional hydra-submitit-launcher
        from hydra_plugins.capsroute_sweeper._slurm_launcher import CapsrouteSlurmLauncher
    except ImportError:
        return
    plugins.register(CapsrouteSlurmLauncher)
