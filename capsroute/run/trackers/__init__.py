"""Experiment trackers beside the run directory: the `logger` config group.

`capsroute.logger_config.require_extras` stops a command before any work when a chosen
tracker's extra is missing.
`open_trackers(config, run_dir, state)` starts (or resumes) every chosen tracker and returns a
`TrackerSet`, which the training loop calls after each epoch's checkpoint (`log_epoch`) and at
the end (`finish`). Each tracker's run id is kept in `<run_dir>/trackers.json`, so a resume
continues the same tracker run; epochs a tracker already holds are not logged again, those it
lacks (the checkpoint got further than the tracker) are logged from the run's own rows.

A tracker that raises (a server gone, a full disk) logs one warning and is dropped; the
training goes on and `metrics.csv` stays complete.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from capsroute.config import Config, config_to_dict
from capsroute.errors import one_line
from capsroute.io import read_json, write_json
from capsroute.logger_config import chosen
from capsroute.run import rundir
from capsroute.run.trackers.base import Tracker, context_for, epoch_values
from capsroute.run.trackers.figures import run_figures

log = logging.getLogger("capsroute")

# files the trackers get at the end: the summary, and any figure in the run directory
ARTEFACT_FILES = (rundir.SUMMARY_FILE,)
TRACKER_DIRS = (rundir.TENSORBOARD_DIR, rundir.WANDB_DIR)


def _tracker_class(name: str) -> type[Tracker]:
    if name == "tensorboard":
        from capsroute.run.trackers.tensorboard import TensorBoardTracker

        return TensorBoardTracker
    if name == "mlflow":
        from capsroute.run.trackers.mlflow import MlflowTracker

        return MlflowTracker
    from capsroute.run.trackers.wandb import WandbTracker

    return WandbTracker


class TrackerSet:
    """The chosen trackers of one run; every call is guarded (see the module docstring)."""

    def __init__(self, run_dir: Path, trackers: list[Tracker]) -> None:
        self.run_dir, self.trackers = run_dir, trackers
        self.saved: dict[str, Any] = read_saved(run_dir)

    def _guard(self, tracker: Tracker, action: str, call: Any) -> bool:
        try:
            call()
            return True
        except Exception as exc:
            log.warning(
                "%s stopped (%s failed: %s); training goes on, metrics.csv stays complete",
                tracker.name, action, one_line(exc),
            )  # fmt: skip
            tracker.abort()
            self.trackers.remove(tracker)
            return False

    def start(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Open every tracker run and log the epochs `rows` it does not hold yet."""
        for tracker in list(self.trackers):

            def begin(tracker: Tracker = tracker) -> None:
                self.saved[tracker.name] = tracker.start(self.saved.get(tracker.name, {}))
                self._write()
                through = tracker.logged_through()
                for epoch, values in rows:
                    if epoch > through:
                        tracker.log_epoch(epoch, values)

            self._guard(tracker, "start", begin)
        self._record_progress()

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        for tracker in list(self.trackers):
            self._guard(tracker, f"epoch {epoch}", lambda t=tracker: t.log_epoch(epoch, values))
        self._record_progress()

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Hand over the summary, summary.json and the figures, then close every tracker run;
        returns `summary`."""
        if not self.trackers:
            return summary
        with tempfile.TemporaryDirectory(prefix="capsroute-figures-") as scratch:
            try:
                figures = run_figures(self.run_dir, Path(scratch))
            except Exception as exc:  # the figures are extra: never lose the summary for them
                log.warning("tracker figures not drawn: %s", one_line(exc))
                figures = []
            files = [*artefact_files(self.run_dir), *figures]
            for tracker in list(self.trackers):
                self._guard(tracker, "finish", lambda t=tracker: t.finish(summary, files))
        self._record_progress()
        return summary

    def _record_progress(self) -> None:
        """Keep what a tracker needs after each epoch (TensorBoard: the last epoch logged)."""
        changed = False
        for tracker in self.trackers:
            state = getattr(tracker, "state", None)
            if state is not None and tracker.name in self.saved:
                self.saved[tracker.name].update(state())
                changed = True
        if changed:
            self._write()

    def _write(self) -> None:
        try:
            write_json(self.run_dir / rundir.TRACKERS_FILE, self.saved)
        except OSError as exc:
            log.warning("could not write %s: %s", rundir.TRACKERS_FILE, one_line(exc))


def read_saved(run_dir: Path) -> dict[str, Any]:
    """`trackers.json`: each tracker's run id and resume point ({} when absent or damaged)."""
    try:
        saved = read_json(run_dir / rundir.TRACKERS_FILE)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def artefact_files(run_dir: Path) -> list[Path]:
    """summary.json and every PNG in the run directory (e.g. `capsroute viz` figures)."""
    files = [run_dir / name for name in ARTEFACT_FILES if (run_dir / name).is_file()]
    pngs = [
        p for p in sorted(run_dir.rglob("*.png"))
        if p.relative_to(run_dir).parts[0] not in TRACKER_DIRS
    ]  # fmt: skip
    return files + pngs


def history_rows(metrics: list[dict[str, Any]], routing: list[dict[str, Any]]) -> list[tuple]:
    """(epoch, values) for every epoch the run holds, routing diagnostics included."""
    return [
        (int(row["epoch"]), epoch_values(row, [r for r in routing if r["epoch"] == row["epoch"]]))
        for row in metrics
    ]


def open_trackers(
    config: Config, run_dir: Path, metrics: list[dict[str, Any]], routing: list[dict[str, Any]]
) -> TrackerSet:
    """Start the chosen trackers (none for `logger=csv`) and log the epochs they lack."""
    names = chosen(config.logger)
    if not names:
        return TrackerSet(run_dir, [])
    context = context_for(run_dir, Path(config.out_root), config_to_dict(config))
    trackers = [_tracker_class(name)(context, getattr(config.logger, name)) for name in names]
    tracked = TrackerSet(run_dir, trackers)
    tracked.start(history_rows(metrics, routing))
    return tracked
