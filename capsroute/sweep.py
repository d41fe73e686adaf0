"""`capsroute sweep`: a resumable routing-iteration grid run as a real Hydra multirun.

The grid (dataset x r x seed, plus any axis the user adds with Hydra's sweep syntax such as
`train.lr=0.001,0.0005`) becomes ordinary Hydra overrides, so Hydra's sweeper expands it and a
Hydra launcher plugin (basic, joblib, submitit local/SLURM) runs it. Each run writes a normal
run directory `<sweep>/<dataset>/r<r>/s<seed>[/<extra axes>]`; the sweep root holds Hydra's
`multirun.yaml` and our `sweep.json` manifest.

Flow: `plan_sweep` expands the grid with Hydra's own `BasicSweeper.split_arguments`, composes and
validates every run's config (bad input fails before anything is written) and classifies each
run directory as done / resume / new / locked; `run_sweep` writes `sweep.json`, runs the
multirun (the `resumable` sweeper skips done and locked runs, so their files stay untouched),
then reads every run's `summary.json` back into the manifest and the final table.
`sweep_task` is the Hydra task: it never raises for a failed run (that would stop the basic
launcher's loop); it records the failure in the run's `summary.json` and returns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import setup_globals
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from capsroute import app as hydra_app
from capsroute import rundir
from capsroute.config import DATASETS, Config, register_schema, to_config
from capsroute.errors import CapsrouteError, ConfigError, RunDirError, one_line

log = logging.getLogger("capsroute")

MANIFEST_FILE = "sweep.json"
SWEEPER = "resumable"
# --launcher NAME -> the packaged config in conf/hydra/launcher/ (each extends the plugin's own)
LAUNCHERS = {
    "basic": "basic",
    "joblib": "capsroute_joblib",
    "submitit_local": "capsroute_submitit_local",
    "submitit_slurm": "capsroute_submitit_slurm",
}
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
# The grid axes the command's options set; the keys an override may set them with instead.
AXES = {
    "--datasets": ("dataset", ("dataset", "dataset.name")),
    "--iters": ("routing.iterations", ("routing.iterations",)),
    "--seeds": ("seed", ("seed",)),
}
AXIS_KEYS = {key for _, keys in AXES.values() for key in keys}
BASE_SUBDIR = "${dataset.name}/r${routing.iterations}/s${seed}"

STATE_DONE, STATE_RESUME, STATE_NEW, STATE_LOCKED = "done", "resume", "new", "locked"
STATE_CONFLICT = "conflict"  # completed, but with another config: never silently reused


# ---------------------------------------------------------------------------------------------
# Input: option parsing and validation (ConfigError -> one line, exit status 2)


def parse_int_list(text: str, option: str, minimum: int) -> list[int]:
    """`"1,3,5"` -> `[1, 3, 5]`: integers >= `minimum`, no duplicates, not empty."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{option} needs a comma-separated list of integers, got '{text}'")
    values: list[int] = []
    for item in items:
        if not re.fullmatch(r"[+-]?\d+", item) or int(item) < minimum:
            raise ConfigError(f"{option}: '{item}' is not an integer >= {minimum}")
        values.append(int(item))
    _no_duplicates(option, items, values)
    return values


def parse_dataset_list(text: str, option: str = "--datasets") -> list[str]:
    """`"mnist,cifar10"` -> known dataset names, no duplicates, not empty."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{option} needs a comma-separated list, got '{text}'")
    for item in items:
        if item not in DATASETS:
            raise ConfigError(
                f"{option}: unknown dataset '{item}'; choose from {', '.join(DATASETS)}"
            )
    _no_duplicates(option, items, items)
    return items


def _no_duplicates(option: str, items: Sequence[str], values: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for item, value in zip(items, values, strict=True):
        if value in seen:
            raise ConfigError(f"{option}: '{item}' is listed twice")
        seen.add(value)


def check_name(name: str) -> str:
    """A sweep name is one directory name: no '/', not '.' or '..'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name):
        raise ConfigError(
            f"--name '{name}' must be one directory name (letters, digits, . _ + = -)"
        )
    return name


def default_name() -> str:
    """A unique, sortable name: the local start time to the second (a suffix on collision)."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


@dataclass
class SweepRequest:
    """What the user asked for: the options of `capsroute sweep` and the extra overrides."""

    iters: list[int] | None = None
    datasets: list[str] | None = None
    seeds: list[int] | None = None
    name: str | None = None
    launcher: str | None = None
    jobs: int | None = None
    overrides: list[str] = field(default_factory=list)
    config_dir: Path | None = None
    dry_run: bool = False
    command: str = ""


# ---------------------------------------------------------------------------------------------
# Overrides: the command's defaults, the grid axes, then the user's overrides (which win)


def parse_overrides(lines: Sequence[str]) -> list[Override]:
    """Hydra's own parser; a syntax error becomes a one-line `ConfigError`."""
    try:
        return OverridesParser.create().parse_overrides(list(lines))
    except Exception as exc:
        raise ConfigError(hydra_app.describe_compose_error(exc)) from exc


def build_overrides(request: SweepRequest, name: str) -> list[str]:
    """The full override list for the multirun.

    The command contributes the axes (from its options), the layout, the sweeper and the
    launcher; any of those the user also sets as an override is dropped in favour of the
    user's value. Giving both an option and an override for the same axis is an error.

    A preset (`experiment=paper_table1`) may carry its own grid in `hydra.sweeper.params`.
    Its axes come between the command's fallbacks and the user's choices: an option
    (`--iters`, `--seeds`, `--datasets`) or an override of the same key replaces the preset's
    value. The grid is then written out as ordinary overrides (and the sweeper's own copy
    cleared), so planning, the run-directory layout and the multirun all see one grid.
    """
    user = parse_overrides(request.overrides)
    user_keys = {override.key_or_group for override in user}
    preset = preset_params(request)
    defaults: dict[str, str] = {}
    for option, (key, keys) in AXES.items():
        values = option_values(request, option)
        clash = sorted(user_keys & set(keys))
        if values is not None and clash:
            raise ConfigError(f"{option} and the override {clash[0]}=... both set {key}; use one")
        if values is not None or clash:  # the command's choice replaces the preset's
            for preset_key in keys:
                preset.pop(preset_key, None)
        elif any(preset_key in preset for preset_key in keys):
            continue
        else:
            if option == "--iters":
                raise ConfigError("--iters is required, e.g. --iters 1,3,5")
            values = ["mnist"] if option == "--datasets" else ["0"]
        if values is not None:
            defaults[key] = f"{key}={','.join(values)}"
    preset_lines = [f"{key}={value}" for key, value in preset.items() if key not in user_keys]
    given = [*preset_lines, *request.overrides]
    defaults.update(layout_overrides(parse_overrides(given), name))
    if preset_lines:
        defaults["hydra.sweeper.params"] = "hydra.sweeper.params=null"
    defaults.update(launcher_overrides(request, user_keys))
    defaults = {key: line for key, line in defaults.items() if key not in user_keys}
    return [*defaults.values(), *given]


def preset_params(request: SweepRequest) -> dict[str, str]:
    """The grid a preset sets in `hydra.sweeper.params`, key -> Hydra value (`"1,3"`).

    Read from the config the user's fixed task overrides compose (sweeps are left out: a
    swept preset cannot name one grid; Hydra's own keys are left out: they need the launcher
    the command picks later). Empty when no preset (or config) sets a grid.
    """
    fixed = [
        o.input_line
        for o in parse_overrides(request.overrides)
        if not (o.is_sweep_override() or o.is_hydra_override())
    ]
    cfg = hydra_app.compose_config(fixed, request.config_dir, with_hydra=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    return {str(key): _hydra_value(value) for key, value in params.items()}


def _hydra_value(value: Any) -> str:
    """A YAML scalar as Hydra override syntax (`False` -> `false`; strings pass through)."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def option_values(request: SweepRequest, option: str) -> list[str] | None:
    values = {"--datasets": request.datasets, "--iters": request.iters, "--seeds": request.seeds}
    chosen = values[option]
    return None if chosen is None else [str(value) for value in chosen]


def extra_axes(user: Sequence[Override]) -> list[str]:
    """Keys the user sweeps beyond dataset/r/seed (e.g. `train.lr=0.001,0.0005`)."""
    return [
        o.key_or_group
        for o in user
        if o.is_sweep_override() and not o.is_hydra_override() and o.key_or_group not in AXIS_KEYS
    ]


def layout_overrides(user: Sequence[Override], name: str) -> dict[str, str]:
    """Where the sweep and its runs go: `${out_root}/sweeps/NAME/<dataset>/r<r>/s<seed>`.

    Extra swept axes would make several runs share that directory, so they are appended as
    Hydra's `override_dirname` restricted to those axes (e.g. `.../s0/train.lr=0.001`).
    """
    extra = extra_axes(user)
    subdir = BASE_SUBDIR
    layout = {
        "hydra.mode": "hydra.mode=MULTIRUN",
        "hydra.sweep.dir": f"hydra.sweep.dir='${{out_root}}/sweeps/{name}'",
    }
    if extra:
        others = sorted(
            {o.key_or_group for o in user if not o.is_hydra_override()} - set(extra) | AXIS_KEYS
        )
        quoted = ",".join(f"'{key}'" for key in others)
        layout["hydra.job.config.override_dirname.exclude_keys"] = (
            f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]"
        )
        subdir += "/${capsroute_slug:${hydra:job.override_dirname}}"
    layout["hydra.sweep.subdir"] = f"hydra.sweep.subdir='{subdir}'"
    layout["hydra/sweeper"] = f"hydra/sweeper={SWEEPER}"
    return layout


def launcher_overrides(request: SweepRequest, user_keys: set[str]) -> dict[str, str]:
    """`--launcher` picks a packaged launcher config; `--jobs` sets its parallelism."""
    launcher = request.launcher or "basic"
    if launcher not in LAUNCHERS:
        raise ConfigError(
            f"--launcher: unknown launcher '{launcher}'; choose from {', '.join(LAUNCHERS)}"
        )
    if request.launcher and "hydra/launcher" in user_keys:
        raise ConfigError("--launcher and the override hydra/launcher=... clash; use one")
    if launcher in LAUNCHER_PLUGINS:
        module, package = LAUNCHER_PLUGINS[launcher]
        try:
            __import__(module)
        except ImportError as exc:
            raise ConfigError(
                f"--launcher {launcher} needs {package}: pip install 'capsroute[launchers]'"
            ) from exc
    out = {"hydra/launcher": f"hydra/launcher={LAUNCHERS[launcher]}"}
    if request.jobs is not None and request.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {request.jobs}")
    if launcher == "basic":
        if request.jobs not in (None, 1):
            raise ConfigError("--jobs needs a parallel launcher: --launcher joblib|submitit_*")
        return out
    jobs = request.jobs
    if launcher in ("joblib", "submitit_local") and jobs is None:
        jobs = default_local_jobs()
    if jobs is not None:
        key = {
            "joblib": "hydra.launcher.n_jobs",
            "submitit_local": "hydra.sweeper.max_batch_size",
            "submitit_slurm": "hydra.launcher.array_parallelism",
        }[launcher]
        out[key] = f"{key}={jobs}"
    return out


def default_local_jobs() -> int:
    """Local parallel jobs by default: one per GPU when there are several, else 2."""
    import torch

    return max(2, torch.cuda.device_count())


# ---------------------------------------------------------------------------------------------
# Planning: every run of the grid, its directory and its state, before anything runs


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
    return SweepPlan(name, root, overrides, grid_of(overrides), runs)


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
                    to_config(cfg)
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
        note = config_conflict(read_summary(run_dir), cfg)
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
    `train.check_resumable`; anything else means another sweep used this name.
    """
    from capsroute.config import config_to_dict, with_added_keys
    from capsroute.train import RESUMABLE_KEYS

    saved = summary.get("config")
    if not isinstance(saved, dict):
        return ""
    changed = [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in _diff(with_added_keys(saved), config_to_dict(to_config(cfg)))
        if key not in RESUMABLE_KEYS
    ]
    if not changed:
        return ""
    return f"completed with another config ({'; '.join(changed[:2])}); use another --name"


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            item
            for key in sorted(set(old) | set(new))
            for item in _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


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
    holder = lock_holder(run_dir)
    if holder is not None:
        return STATE_LOCKED, f"in use by {holder}"
    summary = read_summary(run_dir)
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


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return rundir.read_json(run_dir / rundir.SUMMARY_FILE)
    except (OSError, ValueError):
        return {}


def lock_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir`'s lock (see `rundir.run_lock`), or None; opens the file read-only."""
    path = run_dir / rundir.LOCK_FILE
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


def _slug(text: str) -> str:
    """A directory-safe name for `override_dirname` (paths in values must not nest dirs)."""
    return text.strip("/").replace("/", "_") or "_"


OmegaConf.register_new_resolver("capsroute_slug", _slug, replace=True)


# ---------------------------------------------------------------------------------------------
# Running: manifest, multirun, results


def run_sweep(plan: SweepPlan, request: SweepRequest, console: Console) -> list[dict[str, Any]]:
    """Run the planned sweep to the end; returns one result row per run (also in sweep.json)."""
    manifest = new_manifest(plan, request)
    write_manifest(plan, manifest)
    status = "completed"
    try:
        if plan.count(STATE_NEW) + plan.count(STATE_RESUME):
            run_multirun(plan, request)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SystemExit:  # Hydra reports launcher failures itself, then exits
        status = "failed"
        raise
    finally:
        results = collect_results(plan)
        if status == "completed" and any(r["status"] != rundir.STATUS_COMPLETED for r in results):
            status = "failed"
        manifest.update(status=status, finished_at=_now(), runs=results)
        write_manifest(plan, manifest)
        print_results(plan, results, console)
    return results


def run_multirun(plan: SweepPlan, request: SweepRequest) -> None:
    register_sweeper()
    hydra_app.run_hydra(sweep_task, plan.overrides, request.config_dir)


def new_manifest(plan: SweepPlan, request: SweepRequest) -> dict[str, Any]:
    previous = read_manifest(plan.root)
    first = previous.get("first_started_at") or previous.get("started_at") or _now()
    return {
        "name": plan.name,
        "root": str(plan.root),
        "command": request.command,
        "resume_command": resume_command(request, plan.name),
        "overrides": plan.overrides,
        "grid": plan.grid,
        "total_runs": len(plan.runs),
        "planned": {
            s: plan.count(s)
            for s in (STATE_DONE, STATE_RESUME, STATE_NEW, STATE_LOCKED, STATE_CONFLICT)
        },
        "status": "running",
        "first_started_at": first,
        "started_at": _now(),
        "finished_at": None,
        "invocations": int(previous.get("invocations") or 0) + 1,
        "runs": [result_row(plan, run, read_summary(run.run_dir)) for run in plan.runs],
    }


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        return rundir.read_json(root / MANIFEST_FILE)
    except (OSError, ValueError):
        return {}


def write_manifest(plan: SweepPlan, manifest: dict[str, Any]) -> None:
    rundir.write_json(plan.root / MANIFEST_FILE, manifest)


def resume_command(request: SweepRequest, name: str) -> str:
    """The command line that continues this sweep (the same one, with --name)."""
    if request.name:
        return request.command
    return f"{request.command} --name {shlex.quote(name)}"


def collect_results(plan: SweepPlan) -> list[dict[str, Any]]:
    return [result_row(plan, run, read_summary(run.run_dir)) for run in plan.runs]


def result_row(plan: SweepPlan, run: PlannedRun, summary: dict[str, Any]) -> dict[str, Any]:
    """One run's line in `sweep.json` and the final table."""
    status = summary.get("status") or "not started"
    error = summary.get("error")
    holder = lock_holder(run.run_dir)
    if holder is not None and status != rundir.STATUS_COMPLETED:
        status, error = STATE_LOCKED, f"in use by {holder}"
    if run.state == STATE_CONFLICT:
        status, error = STATE_CONFLICT, run.note
    return {
        "run_dir": str(run.run_dir.relative_to(plan.root)),
        "overrides": run.overrides,
        "dataset": run.dataset,
        "iterations": run.iterations,
        "seed": run.seed,
        "planned": run.state,
        "status": status,
        "epochs_completed": summary.get("epochs_completed", 0),
        "epochs": run.epochs,
        "final_test_acc": summary.get("final_test_acc"),
        "error": error,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Tables


def print_plan(plan: SweepPlan, console: Console) -> None:
    """The planned grid: every run and what will happen to it, with the totals."""
    table = Table(title=f"sweep {plan.name}: {plan.root}")
    for column in ("run", "dataset", "r", "seed", "plan", "note"):
        table.add_column(
            column, justify="right" if column in ("r", "seed") else "left", no_wrap=column == "run"
        )
    for run in plan.runs:
        table.add_row(
            str(run.run_dir.relative_to(plan.root)),
            run.dataset,
            str(run.iterations),
            str(run.seed),
            run.state,
            run.note,
        )
    console.print(table)
    locked, conflict = plan.count(STATE_LOCKED), plan.count(STATE_CONFLICT)
    console.print(
        f"total {len(plan.runs)}: done {plan.count(STATE_DONE)}, "
        f"will resume {plan.count(STATE_RESUME)}, new {plan.count(STATE_NEW)}"
        + (f", locked by another process {locked}" if locked else "")
        + (f", completed with another config {conflict}" if conflict else ""),
        highlight=False,
    )


def print_results(plan: SweepPlan, results: Sequence[dict[str, Any]], console: Console) -> None:
    """Every run's final status and test accuracy."""
    table = Table(title=f"sweep {plan.name}: results")
    table.add_column("run", no_wrap=True)
    table.add_column("status")
    table.add_column("epochs", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("error", max_width=60, overflow="ellipsis")
    for row in results:
        acc = row["final_test_acc"]
        table.add_row(
            row["run_dir"],
            row["status"],
            f"{row['epochs_completed']}/{row['epochs']}",
            "-" if acc is None else f"{100 * acc:.2f}%",
            row["error"] or "",
        )
    console.print(table)
    console.print(f"manifest: {plan.root / MANIFEST_FILE}", highlight=False)


def failed_runs(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in results if row["status"] != rundir.STATUS_COMPLETED]


def sweep(request: SweepRequest, console: Console | None = None) -> SweepPlan:
    """The whole command: plan, print, (unless dry-run) run and report.

    Raises `ConfigError` for bad input (before any file is written) and `CapsrouteError`
    (exit status 1) when any run did not complete.
    """
    console = console or Console()
    plan = plan_sweep(request)
    print_plan(plan, console)
    if request.dry_run:
        return plan
    console.print(
        f"resume with: {resume_command(request, plan.name)}", highlight=False, soft_wrap=True
    )
    results = run_sweep(plan, request, console)
    bad = failed_runs(results)
    if bad:
        raise CapsrouteError(
            f"{len(bad)} of {len(results)} runs did not complete (see the table above); "
            f"fix the cause and re-run with --name {plan.name} to continue"
        )
    return plan


# ---------------------------------------------------------------------------------------------
# The Hydra task (runs inside the launcher: this process, a joblib worker or a SLURM job)


def sweep_task(cfg: DictConfig) -> dict[str, Any]:
    """Train one run of the sweep; a failure is recorded, never raised (the sweep goes on).

    Ctrl-C (and SIGTERM) stop the whole sweep instead: the run is saved as interrupted and a
    re-run resumes it.
    """
    from capsroute.train import InterruptedRunError, train_run

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


def record_failure(run_dir: Path, cfg: DictConfig, exc: BaseException) -> dict[str, Any]:
    """Mark the run failed in its `summary.json`, with the error, under the run's lock.

    `train_run` already does this for failures during training; this covers the ones before
    it writes a summary (missing data, a bad checkpoint, a config error). A completed run's
    summary is never overwritten, and a run locked by another process is left alone.
    """
    error = one_line(exc)
    try:
        with rundir.run_lock(run_dir):
            summary = read_summary(run_dir)
            if summary.get("status") == rundir.STATUS_COMPLETED:
                return {"run_dir": str(run_dir), "status": rundir.STATUS_FAILED, "error": error}
            if not (summary.get("status") == rundir.STATUS_FAILED and summary.get("error")):
                summary = {**failure_summary(run_dir, cfg), **summary}
                summary.update(status=rundir.STATUS_FAILED, error=error, updated_at=_now())
                rundir.write_json(run_dir / rundir.SUMMARY_FILE, summary)
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
        "started_at": _now(),
        "config": plain,
    }


def place_job(config: Config, hydra_cfg: DictConfig) -> Config:
    """Spread parallel jobs over GPUs (by job number) and split CPU cores between them.

    Only fills in what the user left open: `device=auto` and an unset `train.threads`. Both
    keys may differ between attempts without blocking a resume.
    """
    parallel = parallel_jobs(hydra_cfg)
    job_num = int(OmegaConf.select(hydra_cfg, "job.num", default=0) or 0)
    gpus = visible_gpus() if config.device == "auto" else 0
    if config.device == "auto" and parallel > 1 and gpus > 1:
        config.device = f"cuda:{job_num % gpus}"
    if config.train.threads is None and gpus == 0:
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
