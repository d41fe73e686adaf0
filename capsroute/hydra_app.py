"""Hydra behind the CLI: compose and validate configs, and run tasks through `@hydra.main`.

`compose_config` uses Hydra's Compose API (no output directory, no logging): it is how every
command checks its overrides before any work, and how read-only commands get their config.
`run_hydra` runs a task function through `@hydra.main` so that Hydra makes the run directory,
saves `.hydra/`, sets up logging, and, with `hydra.mode=MULTIRUN`, sweeps through a launcher.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from capsroute.config import Config, first_line, register_schema, to_config
from capsroute.errors import ConfigError
from capsroute.logger_config import require_extras

CONFIG_MODULE = "capsroute.conf"
CONFIG_NAME = "config"


def searchpath_overrides(config_dir: Path | None) -> list[str]:
    """Overrides that add a user's config folder in front of the packaged `conf/`."""
    if config_dir is None:
        return []
    folder = Path(config_dir).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--config-dir {config_dir} is not a directory")
    return [f"hydra.searchpath=[file://{folder}]"]


def compose_config(
    overrides: Sequence[str], config_dir: Path | None = None, with_hydra: bool = False
) -> DictConfig:
    """Compose `conf/config.yaml` with `overrides`; bad overrides raise `ConfigError` (one line)."""
    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(
                CONFIG_NAME,
                overrides=[*overrides, *searchpath_overrides(config_dir)],
                return_hydra_config=with_hydra,
            )
    except ConfigError:
        raise
    except Exception as exc:  # Hydra/OmegaConf errors: unknown key, bad type, bad syntax
        raise ConfigError(describe_compose_error(exc)) from exc
    finally:
        GlobalHydra.instance().clear()


def describe_compose_error(exc: BaseException) -> str:
    """One line from Hydra's multi-line, chained composition errors."""
    chain: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 4:
        chain.append(str(current))
        current = current.__cause__ or current.__context__
    yaml_error = _yaml_problem(exc)
    if yaml_error:
        return yaml_error
    text = "\n".join(chain)
    missing_option = re.search(r"Could not find '(.+)/([^/']+)'", text)
    if missing_option:
        group, name = missing_option.groups()
        after = text.split(f"Available options in '{group}':", 1)
        lines = after[1].splitlines()[1:] if len(after) > 1 else []
        choices = [line.strip() for line in itertools.takewhile(lambda x: x[:1] == "\t", lines)]
        return f"unknown {group} '{name}'; choose one of: {', '.join(choices) or '(none)'}"
    bad_char = re.search(r"token recognition error at: '(.*?)'", text, re.DOTALL)
    if bad_char:
        return (
            f"an override holds a character the override syntax does not allow "
            f"({bad_char.group(1)!r}); use letters, digits and . _ + = , - or quote the value"
        )
    unknown_key = re.search(r"Could not override '([^']+)'", text)
    if unknown_key:
        return (
            f"unknown config key '{unknown_key.group(1)}'; "
            "`capsroute info --cfg` lists the valid keys"
        )
    lines = [first_line(part) for part in chain if part.strip() not in ("", "None")]
    details = [line for line in lines[1:] if "$VALUE" not in line and line not in lines[0]]
    return lines[0] + (f": {details[0]}" if details else "") if lines else type(exc).__name__


# The only callables a config may name: the packaged launchers and sweeper (Hydra instantiates
# `hydra.launcher` and `hydra.sweeper` by their `_target_`), and standard logging handlers.
ALLOWED_TARGETS = {
    "hydra.launcher._target_": (
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.capsroute_sweeper._slurm_launcher.CapsrouteSlurmLauncher",
    ),
    "hydra.sweeper._target_": (
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.capsroute_sweeper.ResumableSweeper",
    ),
}
_LOGGING_SECTIONS = ("hydra.hydra_logging", "hydra.job_logging")
_LOGGING_CLASSES = re.compile(r"logging\.(handlers\.)?[A-Za-z]+Handler")


def check_no_code(cfg: Any, where: str = "") -> None:
    """Refuse a composed config that would make Hydra call anything but the allowed classes.

    Hydra instantiates every `_target_` it meets under `hydra.launcher`, `hydra.sweeper` and
    `hydra.callbacks` (nested ones too, e.g. in submitit's `additional_parameters`), and
    `logging.config` calls a handler's `class` and any `()` factory. A config, preset or
    override naming anything else is refused (`ConfigError`) before anything runs.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, dict):
        items: Any = cfg.items()
    elif isinstance(cfg, list):
        items = enumerate(cfg)
    else:
        return
    for key, value in items:
        path = f"{where}{key}"
        if key == "_target_" and str(value) not in ALLOWED_TARGETS.get(path, ()):
            raise ConfigError(
                f"{path}={value} is refused: a config may not name code to run "
                "(only the packaged launchers and sweeper); remove it from the config"
            )
        if key == "()" or (
            key == "class"
            and path.startswith(_LOGGING_SECTIONS)
            and not _LOGGING_CLASSES.fullmatch(str(value))
        ):
            raise ConfigError(
                f"{path}={value} is refused: logging may use the standard logging handlers "
                "only; remove it from the config"
            )
        check_no_code(value, f"{path}.")


def _yaml_problem(exc: BaseException) -> str | None:
    """`FILE line N: problem; fix the YAML` for a YAML syntax error anywhere in the chain."""
    import yaml

    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, yaml.MarkedYAMLError) and current.problem_mark is not None:
            mark = current.problem_mark
            what = "; ".join(str(part) for part in (current.context, current.problem) if part)
            return f"YAML error in {mark.name} line {mark.line + 1}: {what}; fix that file"
        current = current.__cause__ or current.__context__
    return None


def planned_run_dir(overrides: Sequence[str], config_dir: Path | None = None) -> Path:
    """The directory `capsroute train` would write to (Hydra's `hydra.run.dir`)."""
    composed = compose_config(overrides, config_dir, with_hydra=True)
    check_no_code(composed.hydra, "hydra.")
    return Path(str(composed.hydra.run.dir))


def load_config(overrides: Sequence[str], config_dir: Path | None = None) -> Config:
    """Compose and validate: the typed `Config` the overrides describe, to run (so a chosen
    tracker's extra must be installed)."""
    config = to_config(compose_config(overrides, config_dir))
    require_extras(config.logger)
    return config


def run_hydra(
    task: Callable[[DictConfig], Any],
    overrides: Sequence[str],
    config_dir: Path | None = None,
    hydra_flags: Sequence[str] = (),
) -> Any:
    """Run `task` under `@hydra.main` with `overrides`, as if typed after the program name.

    Hydra reads `sys.argv` itself, so it is swapped for the duration of the call.
    """
    register_schema()
    GlobalHydra.instance().clear()
    main = hydra.main(
        config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3"
    )(task)
    argv = [sys.argv[0], *hydra_flags, *overrides, *searchpath_overrides(config_dir)]
    saved = sys.argv
    sys.argv = argv
    try:
        return main()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
