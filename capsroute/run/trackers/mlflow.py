"""MLflow through `MlflowClient` (the `mlflow` extra: mlflow-skinny + SQLAlchemy + alembic).

One MLflow experiment per sweep, one MLflow run per run directory. The default store is a
SQLite database under `out_root` with artefacts beside it, so concurrent sweep jobs can share
it: the first job creates the schema and the experiment under a file lock (several processes
creating a fresh database at once corrupt it). The client API is used, not the fluent one: the
fluent API keeps a global active run, and the basic launcher runs a sweep's jobs in one
process. A resume reopens the stored run id and logs only epochs after the last one MLflow
holds (MLflow cannot delete a point, so nothing is ever logged twice).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capsroute.run.trackers.base import Tracker, numeric_summary

MLFLOW_DB = "mlflow.db"  # under out_root: the default tracking store
MLFLOW_ARTIFACTS = "mlartifacts"  # under out_root: the default store's artefacts
SQLITE_PREFIX = "sqlite:///"
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
METRIC_BATCH = 1000  # and of metrics
# a server that is gone fails at once instead of after ~4 minutes of retries (user values win)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
TERMINAL_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def default_tracking_uri(out_root: Path) -> str:
    return f"{SQLITE_PREFIX}{(out_root / MLFLOW_DB).resolve()}"


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise schema and experiment creation on a local SQLite store (no-op otherwise)."""
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    db = Path(uri.removeprefix(SQLITE_PREFIX))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class MlflowTracker(Tracker):
    name = "mlflow"

    def start(self, saved: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        out_root = self.context.out_root
        uri = self.settings.tracking_uri or default_tracking_uri(out_root)
        experiment = self.settings.experiment or self.context.group
        with store_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)  # creates a new store's schema
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                location = None
                if not self.settings.tracking_uri:
                    location = (out_root / MLFLOW_ARTIFACTS).resolve().as_uri()
                experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location
                )
        if saved.get("run_id") and saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id,
                run_name=self.context.name,
                tags={"capsroute.run_dir": str(self.context.run_dir.resolve())},
            )
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in self.context.params.items()]
            for first in range(0, len(params), PARAM_BATCH):
                self.client.log_batch(self.run_id, params=params[first : first + PARAM_BATCH])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment": experiment}

    def logged_through(self) -> int:
        history = self.client.get_metric_history(self.run_id, "epoch")
        return max((int(point.step) for point in history), default=0)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self._log(values, epoch)

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for first in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first : first + METRIC_BATCH])

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        step = int(summary.get("epochs_completed") or 0)
        self._log({f"summary/{k}": v for k, v in numeric_summary(summary).items()}, step)
        for path in files:
            folder = "figures" if path.suffix == ".png" else None
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
        status = TERMINAL_STATUS.get(str(summary.get("status")), "FAILED")
        self.client.set_terminated(self.run_id, status)
