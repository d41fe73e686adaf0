"""The `logger` config group (conf/logger/): which experiment trackers a run feeds, and the
extra each one needs installed. Part of `capsroute.config`'s schema (`Config.logger`).

`require_extras` is checked when overrides are turned into a config to run
(`hydra_app.load_config`, the sweep's plan), so a missing extra stops a command before any
work; a trained run's saved config is never checked (evaluating it needs no tracker).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from capsroute.errors import ConfigError

# Config sections that say where results are also sent, never what is trained: they may change
# on a resume, and they never make two runs different for a report.
BOOKKEEPING_PREFIX = "logger."


WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class TensorBoardConfig:
    """`logger=tensorboard`: event files in `<run_dir>/tensorboard/`, so a sweep folder is a
    TensorBoard log directory holding one folder per run."""

    enabled: bool = False


@dataclass
class MlflowConfig:
    """`logger=mlflow`: one MLflow run per capsroute run, one experiment per sweep."""

    enabled: bool = False
    tracking_uri: str | None = None  # default: sqlite:///<out_root>/mlflow.db (+ mlartifacts/)
    experiment: str | None = None  # default: the sweep's name; `runs` for `capsroute train`


@dataclass
class WandbConfig:
    """`logger=wandb`: one W&B run per capsroute run, grouped by sweep."""

    enabled: bool = False
    project: str = "capsroute"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; default: online when logged in

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError(
                f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got '{self.mode}'"
            )


@dataclass
class LoggerConfig:
    """Experiment trackers fed besides the run directory (`logger=[tensorboard,mlflow]`);
    metrics.csv stays the record either way (the `logger` group, conf/logger/)."""

    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# logger option -> the modules its extra (`pip install 'capsroute[NAME]'`) provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "wandb": ("wandb",),
}


def chosen(logger: LoggerConfig) -> list[str]:
    """The enabled trackers, in a fixed order."""
    return [name for name in EXTRAS if getattr(logger, name).enabled]


def require_extras(logger: LoggerConfig) -> None:
    """Raise `ConfigError` (one line, exit 2) naming the extra a chosen tracker needs."""
    for name in chosen(logger):
        if any(_missing(module) for module in EXTRAS[name]):
            raise ConfigError(
                f"logger={name} needs the {name} extra: pip install 'capsroute[{name}]'"
            )


def _missing(module: str) -> bool:
    """Whether `module` cannot be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True
