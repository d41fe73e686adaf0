"""The request of `capsroute sweep` and the Hydra overrides it becomes.

The command contributes the grid axes (from `--iters`, `--datasets`, `--seeds`), the run
directory layout, the resumable sweeper and the launcher; the user's overrides win. A preset's
own grid (`hydra.sweeper.params`) sits between the two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

from capsroute import hydra_app
from capsroute.errors import ConfigError

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
    jobs_per_gpu: int | None = None  # K runs at once on each visible GPU (local launchers)
    mps: bool = True  # with jobs_per_gpu > 1: start a CUDA MPS daemon where one can be started
    overrides: list[str] = field(default_factory=list)
    config_dir: Path | None = None
    dry_run: bool = False
    command: str = ""


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
    if request.jobs_per_gpu is not None and launcher not in ("joblib", "submitit_local"):
        raise ConfigError("--jobs-per-gpu needs a local parallel launcher: --launcher joblib")
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
    if request.jobs_per_gpu is not None:
        jobs = jobs_for_gpus(request)
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


def jobs_for_gpus(request: SweepRequest) -> int:
    """`--jobs-per-gpu K`: K runs at once on each visible GPU (jobs are spread over the GPUs by
    job number, `task.place_job`), so K x #GPUs parallel jobs in all."""
    per_gpu = request.jobs_per_gpu or 0
    if per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu must be >= 1, got {per_gpu}")
    if request.jobs is not None:
        raise ConfigError("--jobs and --jobs-per-gpu both set the parallelism; use one")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        raise ConfigError("--jobs-per-gpu: no CUDA GPU is visible here; use --jobs")
    return per_gpu * gpus


def default_local_jobs() -> int:
    """Local parallel jobs by default: one per GPU when there are several, else 2."""
    import torch

    return max(2, torch.cuda.device_count())


def slug(text: str) -> str:
    """A directory-safe name for `override_dirname` (paths in values must not nest dirs)."""
    return text.strip("/").replace("/", "_") or "_"


def register_slug_resolver() -> None:
    """`${capsroute_slug:...}` in `hydra.sweep.subdir` (registered when a sweep is planned or
    run, not as an import side effect)."""
    OmegaConf.register_new_resolver("capsroute_slug", slug, replace=True)
