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
from omegaconf import DictConfig

from capsroute.config import Config, first_line, register_schema, to_config
from capsroute.errors import ConfigError

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
    text = "\n".join(chain)
    missing_option = re.search(r"Could not find '([^/']+)/([^']+)'", text)
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


def planned_run_dir(overrides: Sequence[str], config_dir: Path | None = None) -> Path:
    """The directory `capsroute train` would write to (Hydra's `hydra.run.dir`)."""
    composed = compose_config(overrides, config_dir, with_hydra=True)
    return Path(str(composed.hydra.run.dir))


def load_config(overrides: Sequence[str], config_dir: Path | None = None) -> Config:
    """Compose and validate: the typed `Config` the overrides describe."""
    return to_config(compose_config(overrides, config_dir))


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
