"""Find run directories under some paths and load the usable ones into tidy DataFrames.

A run directory is any folder holding `summary.json` or `metrics.csv` (the layout
`capsroute train` and `capsroute sweep` write). Each run is checked before it is used: a run
that is still running, failed, was interrupted, or whose files are missing, damaged or
inconsistent becomes one row of a warnings table instead of data, so one bad run never
breaks a report and never silently biases an average.

The config comes from `summary.json`'s `config` (what the training loop recorded), else,
for runs written before it held one, from `.hydra/config.yaml`. Swept axes are found from the
data: `dataset.name`, `routing.iterations` and `seed` always, plus any other config key whose
value differs between the usable runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from capsroute.config_history import with_added_keys
from capsroute.io import read_json
from capsroute.logger_config import BOOKKEEPING_PREFIX
from capsroute.report.runfiles import (
    REQUIRED_METRICS,
    UnusableRunError,
    read_evals,
    read_metrics,
    read_numeric_csv,
    read_routing,
)
from capsroute.run import rundir

# Keys that say where things live or how progress is shown, never what was trained.
BOOKKEEPING_KEYS = frozenset(
    {
        "dataset.root",
        "dataset.download",
        "dataset.cache_dir",
        "train.progress",
        "out_root",
        "run_name",
        "report.reference_r",
    }
)
FIXED_AXES = {"dataset": "dataset.name", "r": "routing.iterations", "seed": "seed"}
# How swept config keys read in legends and sentences (tables keep the config key itself).
AXIS_LABELS = {
    "routing.mode": "routing",
    "routing.grad": "routing grad",
    "routing.temperature": "temperature",
    "model.digit_bias": "digit bias",
    "dataset.val_size": "val size",
}
KEY_COLUMNS = ("run", "dataset", "r", "seed")
# `capsroute evaluate`'s optional per-run file (capsroute.evaluate_iters, not imported: torch).
WARNING_COLUMNS = ("run", "status", "problem")
# Runs whose curves so far are drawn: still going, or stopped and resumable ("stale" runs say
# running in summary.json, so they are here too).
PARTIAL_STATUSES = (rundir.STATUS_RUNNING, rundir.STATUS_INTERRUPTED)


@dataclass
class Run:
    """One usable run: its flattened config and its per-epoch and per-iteration rows."""

    name: str
    config: dict[str, Any]
    metrics: pd.DataFrame
    routing: pd.DataFrame
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)  # eval_iters.csv, may be empty
    cross: pd.DataFrame = field(default_factory=pd.DataFrame)  # eval_cross.csv, may be empty


@dataclass
class RunSet:
    """Everything loaded: tidy per-epoch and per-iteration tables, warnings, the extra axes.

    `epochs` adds `test_error` (1 - test_acc) and `gap` (train_eval_acc - test_acc) to the
    metrics.csv columns. `evals` holds the `capsroute evaluate` rows (eval_iters.csv) of the
    runs that have them, at their last epoch; empty when none has.
    """

    epochs: pd.DataFrame
    routing: pd.DataFrame
    warnings: pd.DataFrame
    axes: list[str] = field(default_factory=list)
    found: int = 0
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    # every used run's flattened config, by run name (e.g. for the paper's Table 1 layout)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per-epoch rows of runs still running or interrupted, up to their last epoch, with their
    # `status`: drawn (marked) in the curves, never in a table; they stay in `warnings` too
    partial: pd.DataFrame = field(default_factory=pd.DataFrame)
    # `capsroute evaluate --dataset` rows (eval_cross.csv) at the runs' last epochs
    cross: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def group_columns(self) -> list[str]:
        """What a table row is: dataset, any extra swept axis, then r."""
        return ["dataset", *self.axes, "r"]


def load_runs(paths: Iterable[Path]) -> RunSet:
    """Load every run under `paths`; unusable runs go to `warnings` with the reason."""
    paths = [Path(p).resolve() for p in paths]
    dirs = rundir.find_run_dirs(paths)
    runs: list[Run] = []
    partial: list[tuple[Run, str]] = []
    warnings: list[dict[str, str]] = []
    for run_dir in dirs:
        name = _display_name(run_dir, paths)
        try:
            runs.append(load_run(run_dir, name))
        except UnusableRunError as unusable:
            warnings.append({"run": name, "status": unusable.status, "problem": unusable.problem})
            if unusable.status in PARTIAL_STATUSES:
                partial += [(run, unusable.status) for run in load_partial(run_dir, name)]
    runs, duplicates = _drop_duplicates(runs)
    warnings += duplicates
    axes = swept_axes([run.config for run in runs])
    epochs = _derived(_tidy([_with_keys(run, run.metrics, axes) for run in runs], axes))
    partial_epochs = _derived(
        _tidy(
            [_with_keys(run, run.metrics.assign(status=status), axes) for run, status in partial],
            axes,
        )
    )
    with_evals = [run for run in runs if not run.evals.empty]
    return RunSet(
        epochs=epochs,
        routing=_tidy([_with_keys(run, run.routing, axes) for run in runs], axes),
        warnings=pd.DataFrame(warnings, columns=list(WARNING_COLUMNS)),
        axes=axes,
        found=len(dirs),
        evals=_tidy([_with_keys(run, run.evals, axes) for run in with_evals], axes)
        if with_evals
        else pd.DataFrame(),
        configs={run.name: run.config for run in runs},
        partial=partial_epochs,
        cross=_tidy([_with_keys(run, run.cross, axes) for run in runs if not run.cross.empty], axes)
        if any(not run.cross.empty for run in runs)
        else pd.DataFrame(),
    )


def _derived(epochs: pd.DataFrame) -> pd.DataFrame:
    """Add the per-epoch columns the report plots: test_error and the train-eval/test gap."""
    if epochs.empty:
        return epochs
    return epochs.assign(
        test_error=1.0 - epochs["test_acc"], gap=epochs["train_eval_acc"] - epochs["test_acc"]
    )


def load_partial(run_dir: Path, name: str) -> list[Run]:
    """A running or interrupted run's epochs so far (`[]` when even those are unreadable).

    metrics.csv is written before summary.json each epoch, so it may hold one epoch more than
    the summary says; every row it holds is a finished epoch.
    """
    try:
        summary = _read_summary(run_dir)
        config = flatten(with_added_keys(_read_config(run_dir, summary)))
        metrics = read_numeric_csv(run_dir / rundir.METRICS_FILE, REQUIRED_METRICS)
    except UnusableRunError:
        return []
    if metrics["epoch"].tolist() != list(range(1, len(metrics) + 1)):
        return []
    empty = pd.DataFrame(columns=list(rundir.ROUTING_REQUIRED))
    return [Run(name=name, config=config, metrics=metrics, routing=empty)]


def _display_name(run_dir: Path, roots: list[Path]) -> str:
    """A unique, short name: the path relative to the PATH (or the PATHs' common folder)."""
    base = roots[0] if len(roots) == 1 else Path(os.path.commonpath(roots))
    relative = run_dir.relative_to(base) if run_dir.is_relative_to(base) else run_dir
    return run_dir.name if str(relative) == "." else str(relative)


def load_run(run_dir: Path, name: str) -> Run:
    """Read and check one run directory; raise `UnusableRunError(reason, status)` if unusable."""
    summary = _read_summary(run_dir)
    status = str(summary.get("status", "unknown"))
    if status != rundir.STATUS_COMPLETED:
        raise UnusableRunError(_status_problem(summary, status), status)
    config = flatten(with_added_keys(_read_config(run_dir, summary)))
    metrics = read_metrics(run_dir / rundir.METRICS_FILE, summary)
    routing = read_routing(run_dir / rundir.ROUTING_FILE, metrics, config)
    last = int(metrics["epoch"].iloc[-1])
    evals = read_evals(run_dir / rundir.EVAL_ITERS_FILE, last)
    # the other test set's name must not clash with the run's own `dataset` key column
    cross = read_evals(run_dir / rundir.EVAL_CROSS_FILE, last).rename(
        columns={"dataset": "eval_dataset"}
    )
    return Run(name, config, metrics, routing, evals, cross)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / rundir.SUMMARY_FILE
    if not path.exists():
        raise UnusableRunError("summary.json missing (not started by capsroute, or damaged)")
    try:
        summary = read_json(path)
    except (OSError, ValueError) as exc:
        raise UnusableRunError(f"summary.json unreadable ({type(exc).__name__})") from exc
    problem = rundir.summary_problem(summary)
    if problem:
        raise UnusableRunError(f"summary.json {problem} (damaged)")
    return summary


def _status_problem(summary: dict[str, Any], status: str) -> str:
    done, total = summary.get("epochs_completed", "?"), summary.get("epochs", "?")
    if status == rundir.STATUS_RUNNING:
        return f"still running ({done} of {total} epochs), or killed without cleaning up"
    if status == rundir.STATUS_INTERRUPTED:
        return f"interrupted after {done} of {total} epochs; run it again to resume"
    if status == rundir.STATUS_FAILED:
        return f"failed after {done} of {total} epochs: {summary.get('error') or 'no message'}"
    return f"unknown status {status!r}"


def _read_config(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The config the run trained with: `summary.json`'s copy, written by the training loop
    itself (a refused command never touches it); `.hydra/config.yaml` only for older runs."""
    config = summary.get("config")
    if isinstance(config, dict):
        return config
    path = run_dir / ".hydra" / "config.yaml"
    if path.exists():
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if isinstance(loaded, dict):
                return loaded
        except Exception as exc:  # any YAML/OmegaConf error: the file is damaged
            raise UnusableRunError(f".hydra/config.yaml unreadable ({type(exc).__name__})") from exc
    raise UnusableRunError("no config: summary.json 'config' and .hydra/config.yaml both missing")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists become their text so they can group rows."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def _drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[dict[str, str]]]:
    """Keep one run per identical config (e.g. a sweep reached by two PATHs, or a copy)."""
    seen: dict[str, str] = {}
    kept, warnings = [], []
    for run in runs:
        key = repr(sorted((k, repr(v)) for k, v in run.config.items() if not _bookkeeping(k)))
        if key in seen:
            problem = f"same config as {seen[key]}; counted once"
            warnings.append({"run": run.name, "status": "duplicate", "problem": problem})
        else:
            seen[key] = run.name
            kept.append(run)
    return kept, warnings


def swept_axes(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys, besides dataset/r/seed and bookkeeping, whose values differ between runs
    of the same dataset: what a dataset's own group sets (CIFAR-10's crop, SVHN's smaller
    network) differs between datasets but is no axis within one, and would split the panels."""
    keys = sorted({key for config in configs for key in config})
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        by_dataset.setdefault(str(config.get("dataset.name")), []).append(config)
    return [
        key
        for key in keys
        if not _bookkeeping(key)
        and key not in FIXED_AXES.values()
        and any(len({repr(c.get(key)) for c in group}) > 1 for group in by_dataset.values())
    ]


def _bookkeeping(key: str) -> bool:
    """Where results live or are also sent (trackers), never what was trained."""
    return key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIX)


def axis_label(axis: str, value: object) -> str:
    """`routing.mode`, `uniform` -> `routing=uniform`: a swept value as legends show it."""
    if isinstance(value, bool) or value in ("True", "False"):
        value = "on" if value in (True, "True") else "off"
    return f"{AXIS_LABELS.get(axis, axis)}={value}"


def _with_keys(run: Run, frame: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    keys = {column: run.config.get(key) for column, key in FIXED_AXES.items()}
    keys.update({axis: run.config.get(axis) for axis in axes})
    return frame.assign(run=run.name, **keys)


def _tidy(frames: list[pd.DataFrame], axes: list[str]) -> pd.DataFrame:
    """One frame: the run's keys and swept axes first, then the file's columns in file order.

    An axis whose values are not all numbers (or holds None) becomes text, so it sorts.
    """
    # runs without rows (a baseline CNN's routing) would turn every column into objects
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=[*KEY_COLUMNS, *axes])
    frame = pd.concat(frames, ignore_index=True)
    for axis in axes:
        values = frame[axis]
        if values.isna().any() or not pd.api.types.is_numeric_dtype(values):
            frame[axis] = values.astype(str)
    front = [*KEY_COLUMNS, *axes]
    return frame[[*front, *(c for c in frame.columns if c not in front)]]
