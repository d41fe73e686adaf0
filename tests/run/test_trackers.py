"""Experiment trackers read back through their own readers: one continuous history per run.

A tiny sweep run is interrupted after epoch 2's checkpoint but before any tracker logged epoch 2
(the worst moment), then resumed to epoch 3. Every tracker must then hold epochs 1, 2, 3 once
each, in order, with the values of metrics.csv and routing.csv, in one tracker run named after
the run directory and grouped by the sweep.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from capsroute import hydra_app
from capsroute.errors import ConfigError
from capsroute.run import rundir
from capsroute.run.trackers import TrackerSet
from capsroute.run.train import InterruptedRunError, train_run
from tests.conftest import TINY_MODEL

EPOCHS = 3
INTERRUPT_AT = 2
RUN = "mnist/r2/s0"


def tiny_config(data_root: Path, out_root: Path, logger: str) -> object:
    return hydra_app.load_config(
        [
            f"dataset.root={data_root}",
            "dataset.train_size=64",
            "dataset.test_size=64",
            "dataset.train_eval_size=64",
            "train.batch_size=64",
            "train.eval_batch_size=64",
            f"train.epochs={EPOCHS}",
            "train.progress=false",
            "routing.iterations=2",
            f"out_root={out_root}",
            f"logger={logger}",
            *TINY_MODEL,
        ]
    )


def interrupted_and_resumed(data_root: Path, out_root: Path, logger: str, monkeypatch) -> Path:
    """Train with an interrupt between epoch 2's checkpoint and its tracker logging; resume."""
    config = tiny_config(data_root, out_root, logger)
    run_dir = out_root / rundir.SWEEPS_DIR / "grid" / RUN
    real = TrackerSet.log_epoch

    def stop_at(self: TrackerSet, epoch: int, values: dict) -> None:
        if epoch == INTERRUPT_AT:
            raise KeyboardInterrupt
        real(self, epoch, values)

    monkeypatch.setattr(TrackerSet, "log_epoch", stop_at)
    with pytest.raises(InterruptedRunError):
        train_run(config, run_dir)
    assert json.loads((run_dir / rundir.SUMMARY_FILE).read_text())["epochs_completed"] == 2
    monkeypatch.setattr(TrackerSet, "log_epoch", real)
    assert train_run(config, run_dir)["status"] == rundir.STATUS_COMPLETED
    return run_dir


def expected(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(run_dir / rundir.METRICS_FILE), pd.read_csv(run_dir / rundir.ROUTING_FILE)


@pytest.fixture(scope="module")
def tracked_run(data_root: Path, tmp_path_factory) -> Path:
    """One run logged to TensorBoard and MLflow at once (the extras `make test` installs)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    out_root = tmp_path_factory.mktemp("trackers") / "outputs"
    with pytest.MonkeyPatch.context() as monkeypatch:
        return interrupted_and_resumed(data_root, out_root, "[tensorboard,mlflow]", monkeypatch)


def test_tensorboard_history_is_continuous_after_a_resume(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tracked_run / rundir.TENSORBOARD_DIR
    reader = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    reader.Reload()
    metrics, routing = expected(tracked_run)
    for column in ("test_acc", "train_loss", "images_per_s", "lr"):
        points = [(e.step, e.value) for e in reader.Scalars(column)]
        assert [step for step, _ in points] == [1, 2, 3], column
        assert [v for _, v in points] == pytest.approx(metrics[column].tolist(), rel=1e-6)
    entropy = [(e.step, e.value) for e in reader.Scalars("routing/iter2/entropy")]
    at_iter2 = routing[routing["iteration"] == 2]["entropy"].tolist()
    assert [s for s, _ in entropy] == [1, 2, 3]
    assert [v for _, v in entropy] == pytest.approx(at_iter2, rel=1e-6)
    assert "config/text_summary" in reader.Tags()["tensors"]
    assert "summary/text_summary" in reader.Tags()["tensors"]
    assert sorted(reader.Tags()["images"]) == ["figures/accuracy", "figures/routing"]
    assert reader.Images("figures/accuracy")[0].encoded_image_string[:4] == b"\x89PNG"
    assert len(list(logdir.iterdir())) == 2  # one events file per segment, no sub-runs


def test_mlflow_run_is_continued_with_params_and_artefacts(tracked_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    saved = json.loads((tracked_run / rundir.TRACKERS_FILE).read_text())["mlflow"]
    out_root = tracked_run.parents[4]
    assert saved["tracking_uri"] == f"sqlite:///{(out_root / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    experiment = client.get_experiment_by_name("grid")  # one experiment per sweep
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_id, r.info.run_name, r.info.status) for r in runs] == [
        (saved["run_id"], RUN, "FINISHED")
    ]
    metrics, routing = expected(tracked_run)
    for column in ("epoch", "test_acc", "train_eval_acc", "routing/iter1/delta_b"):
        history = client.get_metric_history(saved["run_id"], column)
        assert sorted(p.step for p in history) == [1, 2, 3], column
    acc = sorted(client.get_metric_history(saved["run_id"], "test_acc"), key=lambda p: p.step)
    assert [p.value for p in acc] == pytest.approx(metrics["test_acc"].tolist(), rel=1e-9)
    params = runs[0].data.params
    assert params["routing.iterations"] == "2" and params["logger.mlflow.enabled"] == "True"
    artefacts = [f.path for f in client.list_artifacts(saved["run_id"])]
    assert artefacts == ["figures", rundir.SUMMARY_FILE]
    figures = [f.path for f in client.list_artifacts(saved["run_id"], "figures")]
    assert figures == ["figures/accuracy.png", "figures/routing.png"]
    final = runs[0].data.metrics["summary/final_test_acc"]
    assert final == pytest.approx(metrics["test_acc"].iloc[-1])
    del routing


@pytest.mark.slow
def test_wandb_offline_segments_join_into_one_history(
    data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """W&B (the `wandb` extra, not installed by `make test`): slow, skipped without it."""
    pytest.importorskip("wandb")
    from capsroute.run.trackers.wandb_reader import read_segments

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: offline
    run_dir = interrupted_and_resumed(data_root, tmp_path / "outputs", "wandb", monkeypatch)
    saved = json.loads((run_dir / rundir.TRACKERS_FILE).read_text())["wandb"]
    assert saved["mode"] == "offline"
    segments = read_segments(run_dir / rundir.WANDB_DIR, saved["id"])
    assert len(segments) == 2  # the interrupted process and the resume
    assert {(s["run"]["name"], s["run"]["group"]) for s in segments} == {(RUN, "grid")}
    rows = [row for s in segments for row in s["history"]]
    metrics, _ = expected(run_dir)
    assert [row["_step"] for row in rows] == [1, 2, 3]
    assert [row["test_acc"] for row in rows] == pytest.approx(metrics["test_acc"].tolist())
    assert all("routing/iter2/max_c" in row for row in rows)
    assert [s["exit_code"] for s in segments] == [1, 0]  # interrupted, then completed
    assert segments[-1]["summary"]["final_test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1])
    assert rundir.SUMMARY_FILE in segments[-1]["files"]
    assert rows[-1]["figures/accuracy/_type"] == "image-file"  # the reader joins nested keys
    assert segments[0]["config"]["routing"]["iterations"] == 2


def test_a_tracker_that_fails_warns_once_and_training_goes_on(
    data_root: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = tiny_config(data_root, tmp_path / "outputs", "mlflow")
    config.train.epochs = 1
    config.logger.mlflow.tracking_uri = "http://127.0.0.1:9"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="capsroute"):
        summary = train_run(config, tmp_path / "run")
    assert summary["status"] == rundir.STATUS_COMPLETED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow stopped (start failed")
    assert len(pd.read_csv(tmp_path / "run" / rundir.METRICS_FILE)) == 1


def test_a_missing_extra_stops_before_any_work(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb extra: pip install"):
        hydra_app.load_config(["logger=[tensorboard,wandb]"])
    hydra_app.load_config(["logger=csv"])  # nothing needed


def test_the_cli_names_the_missing_extra_and_exits_2(tmp_path: Path) -> None:
    """`capsroute train logger=wandb` without wandb: one line, exit 2, no directory made."""
    hide = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'wandb': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "sys.argv = ['capsroute', 'train', 'logger=wandb']\n"
        "from capsroute.cli import main; main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: logger=wandb needs the wandb extra: pip install 'capsroute[wandb]'"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_concurrent_jobs_share_a_fresh_mlflow_store(tmp_path: Path) -> None:
    """Four processes start MLflow runs of one sweep at once on a store that does not exist
    yet (unlocked, a fresh SQLite store is corrupted by this): all four runs land in one
    experiment."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from capsroute.run.trackers.mlflow import default_tracking_uri

    out_root = tmp_path / "outputs"
    job = (
        "import sys; from pathlib import Path\n"
        "from capsroute.logger_config import MlflowConfig\n"
        "from capsroute.run.trackers.base import context_for\n"
        "from capsroute.run.trackers.mlflow import MlflowTracker\n"
        "out = Path(sys.argv[1]); run = out / 'sweeps' / 'grid' / 'mnist' / sys.argv[2] / 's0'\n"
        "tracker = MlflowTracker(context_for(run, out, {'seed': 0}), MlflowConfig(enabled=True))\n"
        "tracker.start({}); tracker.log_epoch(1, {'test_acc': 0.5})\n"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", job, str(out_root), f"r{r}"], cwd=tmp_path)
        for r in (1, 2, 3, 4)
    ]
    assert [p.wait(timeout=300) for p in jobs] == [0, 0, 0, 0]
    client = MlflowClient(tracking_uri=default_tracking_uri(out_root))
    experiment = client.get_experiment_by_name("grid")
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert names == [f"mnist/r{r}/s0" for r in (1, 2, 3, 4)]
