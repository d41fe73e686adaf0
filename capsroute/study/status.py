"""`capsroute status`: where a sweep stands, read from its run directories alone.

Everything comes from files a run writes as it goes (`summary.json`, `metrics.csv`, the run's
`.lock`) and the sweep's `sweep.json`, so the command works on a sweep that runs elsewhere (a
cluster) on a shared filesystem, and never changes a file.

A run's state:
- `completed`, `failed`, `interrupted`: what its `summary.json` says;
- `running`: `summary.json` says running and a process holds the run's lock;
- `stale`: `summary.json` says running but nobody holds the lock: the process was killed without
  cleaning up (SIGKILL, a lost node), or the filesystem does not share `flock` locks;
- `pending`: listed in `sweep.json` but not started.

Times: a run's `wall_seconds` is its training and evaluation time over completed epochs; a
running run adds the time since its last epoch was written. The ETA of a run is its remaining
epochs times its mean epoch time (pending runs use the mean epoch time of the sweep's runs),
less the time already spent in the current epoch. The total ETA assumes the runs go one after
another (the basic launcher); with N parallel jobs it is about N times too long.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from capsroute.errors import ConfigError
from capsroute.hydra_app import load_config
from capsroute.run import rundir
from capsroute.study.sweep.manifest import MANIFEST_FILE, read_manifest

STATE_PENDING = "pending"
STATE_STALE = "stale"
ACTIVE_STATES = (rundir.STATUS_RUNNING, STATE_PENDING)
DEFAULT_INTERVAL_S = 10.0
WIDE_TABLE = 160  # columns when not on a terminal (pipes, logs): the table does not wrap
STATE_STYLES = {
    rundir.STATUS_COMPLETED: "green",
    rundir.STATUS_RUNNING: "cyan",
    rundir.STATUS_FAILED: "red",
    rundir.STATUS_INTERRUPTED: "yellow",
    STATE_STALE: "magenta",
    STATE_PENDING: "dim",
}


@dataclass
class RunStatus:
    """One run's line of the table."""

    name: str
    state: str
    epoch: int
    epochs: int | None
    last_acc: float | None
    best_acc: float | None
    images_per_s: float | None
    seconds: float  # time spent so far
    eta: float | None  # seconds left; None when unknown
    error: str | None = None
    epoch_seconds: float | None = None  # mean seconds per completed epoch


@dataclass
class SweepStatus:
    """Every run of one sweep, and whether the sweep has ended."""

    root: Path
    runs: list[RunStatus]
    sweep_state: str | None  # sweep.json's status, None without a manifest

    @property
    def ended(self) -> bool:
        """No run is going and none waits, or the sweep command itself has finished."""
        if self.sweep_state not in (None, rundir.STATUS_RUNNING):
            return True
        return not any(run.state in ACTIVE_STATES for run in self.runs)


def newest_sweep(out_root: Path) -> Path:
    """The most recently modified sweep folder under `<out_root>/sweeps/`."""
    folder = out_root / rundir.SWEEPS_DIR
    sweeps = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not sweeps:
        raise ConfigError(f"no sweeps under {folder}; give a SWEEP_DIR")
    return max(sweeps, key=lambda p: (p.stat().st_mtime, p.name))


def sweep_run_dirs(root: Path) -> list[Path]:
    """The sweep's runs: those `sweep.json` lists, plus any run directory found below `root`."""
    listed = [root / row["run_dir"] for row in read_manifest(root).get("runs", [])]
    found = [root / p.relative_to(root.resolve()) for p in rundir.find_run_dirs([root])]
    return sorted({p.resolve(): p for p in [*listed, *found]}.values(), key=_natural)


def _natural(path: Path) -> list[Any]:
    """Sort key: `r3` before `r11`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def read_status(root: Path, now: float | None = None) -> SweepStatus:
    """Every run's status under the sweep folder `root` (`now`: epoch seconds, for tests)."""
    if not root.is_dir():
        raise ConfigError(f"sweep folder {root} does not exist")
    manifest = read_manifest(root)
    dirs = sweep_run_dirs(root)
    if not dirs:
        raise ConfigError(f"{root} holds no {MANIFEST_FILE} and no run directory")
    now = time.time() if now is None else now
    planned = {
        (root / row["run_dir"]).resolve(): row.get("epochs") for row in manifest.get("runs", [])
    }
    runs = [run_status(path, _name(path, root), planned.get(path.resolve()), now) for path in dirs]
    _estimate_pending(runs)
    return SweepStatus(root=root, runs=runs, sweep_state=manifest.get("status"))


def _name(path: Path, root: Path) -> str:
    relative = path.relative_to(root) if path.is_relative_to(root) else path
    return str(relative) if str(relative) != "." else path.name


def run_status(run_dir: Path, name: str, planned_epochs: int | None, now: float) -> RunStatus:
    """One run's state, progress, accuracies, speed, time so far and time left."""
    summary = rundir.read_summary(run_dir)
    rows = read_metric_rows(run_dir / rundir.METRICS_FILE)
    state = str(summary.get("status") or STATE_PENDING)
    if state == rundir.STATUS_RUNNING and rundir.lock_holder(run_dir) is None:
        state = STATE_STALE
    epochs = summary.get("epochs") or planned_epochs
    epoch = int(summary.get("epochs_completed") or len(rows))
    seconds = float(summary.get("wall_seconds") or 0.0)
    in_epoch = 0.0
    if state == rundir.STATUS_RUNNING:
        in_epoch = max(0.0, now - _timestamp(summary.get("updated_at"), now))
    accs = [row["test_acc"] for row in rows if row.get("test_acc") is not None]
    speed = rows[-1].get("images_per_s") if rows else None
    per_epoch = seconds / epoch if epoch and seconds else None
    eta: float | None = None
    if state == rundir.STATUS_COMPLETED:
        eta = 0.0
    elif state == rundir.STATUS_RUNNING and per_epoch and epochs:
        eta = max(0.0, (int(epochs) - epoch) * per_epoch - in_epoch)
    return RunStatus(
        name=name,
        state=state,
        epoch=epoch,
        epochs=int(epochs) if epochs else None,
        last_acc=accs[-1] if accs else None,
        best_acc=max(accs) if accs else None,
        images_per_s=speed,
        seconds=seconds + in_epoch,
        eta=eta,
        error=summary.get("error"),
        epoch_seconds=per_epoch,
    )


def _estimate_pending(runs: list[RunStatus]) -> None:
    """Pending runs (and running ones before their first epoch): the sweep's mean epoch time."""
    timed = [run.epoch_seconds for run in runs if run.epoch_seconds]
    if not timed:
        return
    mean = sum(timed) / len(timed)
    for run in runs:
        if run.eta is None and run.epochs and run.state in ACTIVE_STATES:
            run.eta = (run.epochs - run.epoch) * mean


def _timestamp(text: Any, default: float) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return default


def read_metric_rows(path: Path) -> list[dict[str, float | None]]:
    """metrics.csv as numbers (empty cells None); [] when missing or unreadable."""
    try:
        with path.open(newline="") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def format_duration(seconds: float | None) -> str:
    """`3725` -> `1h02m`, `65` -> `1m05s`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def totals(status: SweepStatus) -> dict[str, Any]:
    """The bottom line: counts per state, epochs done of planned, time so far and time left."""
    runs = status.runs
    etas = [run.eta for run in runs if run.state in ACTIVE_STATES]
    speeds = [
        run.images_per_s
        for run in runs
        if run.state == rundir.STATUS_RUNNING and run.images_per_s is not None
    ]
    return {
        "states": Counter(run.state for run in runs),
        "epoch": sum(run.epoch for run in runs),
        "epochs": sum(run.epochs or 0 for run in runs),
        "best_acc": max((r.best_acc for r in runs if r.best_acc is not None), default=None),
        "images_per_s": sum(speeds) if speeds else None,
        "seconds": sum(run.seconds for run in runs),
        "eta": None if any(e is None for e in etas) else sum(e for e in etas if e is not None),
    }


def status_table(status: SweepStatus) -> Table:
    """The table `capsroute status` prints: one row per run, then the totals."""
    total = totals(status)
    states = ", ".join(f"{n} {state}" for state, n in sorted(total["states"].items()))
    table = Table(
        title=f"sweep {status.root.name}: {status.root}",
        caption=f"{len(status.runs)} runs: {states}",
        show_footer=True,
    )
    footers = {
        "run": f"total {len(status.runs)}",
        "epoch": f"{total['epoch']}/{total['epochs']}",
        "best acc": _pct(total["best_acc"]),
        "img/s": "-" if total["images_per_s"] is None else f"{total['images_per_s']:.0f}",
        "time": format_duration(total["seconds"]),
        "ETA": format_duration(total["eta"]),
    }
    for column in ("run", "status", "epoch", "last acc", "best acc", "img/s", "time", "ETA"):
        table.add_column(
            column,
            footer=footers.get(column, ""),
            justify="left" if column in ("run", "status") else "right",
            no_wrap=column == "run",
        )
    table.add_column("note", max_width=50, overflow="ellipsis")
    for run in status.runs:
        style = STATE_STYLES.get(run.state, "")
        table.add_row(
            run.name,
            f"[{style}]{run.state}[/]" if style else run.state,
            f"{run.epoch}/{run.epochs or '?'}",
            _pct(run.last_acc),
            _pct(run.best_acc),
            "-" if run.images_per_s is None else f"{run.images_per_s:.0f}",
            format_duration(run.seconds),
            format_duration(run.eta),
            run.error or "",
        )
    return table


def show_status(
    root: Path, console: Console, watch: bool = False, interval: float = DEFAULT_INTERVAL_S
) -> SweepStatus:
    """Print the table once, or (`watch`) refresh it in place until the sweep ends."""
    status = read_status(root)
    if not watch:
        console.print(status_table(status))
        return status
    with Live(status_table(status), console=console, auto_refresh=False) as live:
        while not status.ended:
            time.sleep(interval)
            status = read_status(root)
            live.update(status_table(status), refresh=True)
    return status


def status_command(
    args: list[str], watch: bool, interval: float, config_dir: Path | None = None
) -> SweepStatus:
    """`capsroute status [SWEEP_DIR] [key=value ...]`: the overrides give `out_root`."""
    paths = [arg for arg in args if "=" not in arg]
    if len(paths) > 1 or any(arg.startswith("-") for arg in paths):
        raise ConfigError(f"give at most one SWEEP_DIR and key=value overrides, got {args}")
    if interval <= 0:
        raise ConfigError(f"--interval must be > 0, got {interval}")
    config = load_config([arg for arg in args if "=" in arg], config_dir)
    root = Path(paths[0]) if paths else newest_sweep(Path(config.out_root))
    console = Console(width=None if sys.stdout.isatty() else WIDE_TABLE)
    return show_status(root, console, watch, interval)
