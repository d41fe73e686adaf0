"""What every experiment tracker gets, and the interface each one implements.

A tracker mirrors the run directory into TensorBoard, MLflow or W&B; it never decides anything
about training, and `metrics.csv` stays the record. Values are what the run directory holds:
the config (flattened for trackers that want flat parameters), every `metrics.csv` column and
every routing diagnostic per iteration, at step = epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsroute.run import rundir

# routing.csv columns that name the row rather than measure something
ROUTING_KEYS = ("epoch", "iteration")
MAX_PARAM_CHARS = 500  # a flattened config value longer than this is cut (MLflow's limit: 6000)


@dataclass
class TrackerContext:
    """Where a tracker run belongs: the run directory, its name, its sweep, its config."""

    run_dir: Path
    name: str  # the run directory's path under its sweep (`mnist/r3/s0`), or its folder name
    group: str  # the sweep's name, or `runs` for a run outside any sweep
    config: dict[str, Any]  # the nested, plain config (`config_to_dict`)
    out_root: Path

    @property
    def params(self) -> dict[str, str | float | int | bool]:
        """The flattened config: `a.b.c` keys; lists and None become their text."""
        return flatten_params(self.config)


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            flat[f"{prefix}{key}"] = value[:MAX_PARAM_CHARS] if isinstance(value, str) else value
        else:
            flat[f"{prefix}{key}"] = str(value)[:MAX_PARAM_CHARS]
    return flat


def context_for(run_dir: Path, out_root: Path, config: dict[str, Any]) -> TrackerContext:
    """Name a tracker run after its run directory and group it by the sweep it belongs to."""
    sweeps = (out_root / rundir.SWEEPS_DIR).resolve()
    resolved = run_dir.resolve()
    if resolved.is_relative_to(sweeps) and resolved != sweeps:
        parts = resolved.relative_to(sweeps).parts
        group, name = parts[0], "/".join(parts[1:]) or parts[0]
    else:
        group, name = "runs", run_dir.name
    return TrackerContext(run_dir, name, group, config, out_root)


def epoch_values(row: dict[str, Any], routing: list[dict[str, Any]]) -> dict[str, float]:
    """One epoch's numbers: every filled `metrics.csv` column, then `routing/iter{k}/{column}`."""
    values = {key: float(row[key]) for key in rundir.METRICS_COLUMNS if row.get(key) is not None}
    for item in routing:
        for key, value in item.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if key not in ROUTING_KEYS and numeric:  # not the text `split` column, not blanks
                values[f"routing/iter{int(item['iteration'])}/{key}"] = float(value)
    return values


def numeric_summary(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's top-level numbers (final and best accuracies, epochs, times)."""
    return {
        key: float(value)
        for key, value in summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


class Tracker(ABC):
    """One experiment tracker. Any exception it raises disables it (one warning), never the run.

    Call order: `start` (new or resumed tracker run; returns what `trackers.json` keeps for the
    next resume), `logged_through` (the last epoch the tracker already holds), `log_epoch` for
    every later epoch, `finish` at the end with the summary and the files to attach.
    """

    name = ""  # the logger option, the extra to install, and the key in trackers.json

    def __init__(self, context: TrackerContext, settings: Any) -> None:
        self.context, self.settings = context, settings

    @abstractmethod
    def start(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Open the tracker run: `saved` is what the last `start` returned ({} for a new run)."""

    @abstractmethod
    def logged_through(self) -> int:
        """The last epoch the tracker run already holds (0: none)."""

    @abstractmethod
    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Record one epoch's values at step `epoch`."""

    @abstractmethod
    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        """Attach the summary and `files` (summary.json, figures) and close the tracker run."""

    def abort(self) -> None:  # noqa: B027 (optional: most trackers have nothing to release)
        """Release what is open after a failure; must not raise."""
