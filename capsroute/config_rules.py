"""Value rules of the config that are more than a range: finite numbers, the seed's width, and
the names that place a run on disk. Used by `capsroute.config`'s `__post_init__` checks, so a
value that cannot work is refused in one line before any work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from capsroute.errors import ConfigError

# Seeds feed torch's and NumPy's generators, also as `seed * 1_000_003 + epoch`; 32 bits keep
# every derived seed inside the 64 bits torch accepts.
MAX_SEED = 2**32 - 1
# One directory name: what `run_name` may be (and what `capsroute sweep --name` allows).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")
NAME_RULE = "one directory name of letters, digits and . _ + = , - (not '.', '..' or a path)"


def require_finite(section: Any, prefix: str) -> None:
    """Every float field of the dataclass `section` is a finite number (no inf, no nan)."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{item.name} must be a finite number, got {value}")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED} (32 bits), got {seed}")


def check_run_name(name: str) -> None:
    """`run_name` is the run's folder under `<out_root>/runs/`: never the runs root itself,
    never outside it, never a name a shell or Hydra would mangle."""
    if "${" in name:  # the schema's default, before Hydra resolves it
        return
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"run_name {name!r} must be {NAME_RULE}")


def check_out_root(out_root: str) -> None:
    """An empty `out_root` (e.g. an unset shell variable) would write to `/runs/`."""
    if not out_root.strip():
        raise ConfigError(
            "out_root is empty (an unset variable?); give a folder, e.g. out_root=outputs"
        )
    if any(ord(char) < 32 for char in out_root):
        raise ConfigError(f"out_root {out_root!r} holds a control character (newline, tab)")
