"""The training loop writes a complete run directory, resumes exactly, and refuses misuse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from capsroute.errors import RunDirError
from capsroute.hydra_app import load_config
from capsroute.run import rundir
from capsroute.run.rundir import METRICS_COLUMNS
from capsroute.run.train import train_run

TIMING = {"epoch_seconds", "images_per_s", "eval_seconds"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def numbers(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns, plus routing.csv: what must reproduce."""
    metrics = [
        {k: v for k, v in row.items() if k not in TIMING}
        for row in read_rows(run_dir / rundir.METRICS_FILE)
    ]
    return metrics + read_rows(run_dir / rundir.ROUTING_FILE)


def test_run_directory_holds_every_result_file(tmp_path: Path, tiny_overrides: list[str]) -> None:
    summary = train_run(load_config(tiny_overrides), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("metrics.csv", "routing.csv", "summary.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    metrics = read_rows(run / "metrics.csv")
    assert [row["epoch"] for row in metrics] == ["1", "2"]
    assert list(metrics[0]) == list(METRICS_COLUMNS)
    routing = read_rows(run / "routing.csv")
    assert [(r["epoch"], r["iteration"]) for r in routing] == [
        (str(e), str(k)) for e in (1, 2) for k in (1, 2, 3)
    ]
    # no validation split: diagnostics on the test set; the last |Δb| is never applied, so
    # it is not recorded; the weighted and agreement diagnostics are numbers
    assert {r["split"] for r in routing} == {"test"}
    assert [r["delta_b"] == "" for r in routing[:3]] == [False, False, True]
    for name in rundir.WEIGHTED_DIAGNOSTICS:
        assert all(0.0 <= float(r[name]) <= 2.31 for r in routing), name
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == summary["status"] == "completed"
    assert saved["epochs_completed"] == 2
    assert saved["final_test_acc"] == pytest.approx(float(metrics[-1]["test_acc"]))
    assert saved["data_sizes"] == {"train": 256, "train_eval": 64, "test": 128}
    assert saved["parameters"]["total"] > saved["parameters"]["without_decoder"]
    assert saved["versions"]["torch"]


def test_same_seed_gives_identical_metrics(tmp_path: Path, tiny_overrides: list[str]) -> None:
    config = load_config(tiny_overrides)
    train_run(config, tmp_path / "a")
    train_run(config, tmp_path / "b")
    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")


def test_resume_matches_uninterrupted_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    train_run(load_config(tiny_overrides), tmp_path / "straight")
    train_run(load_config([*tiny_overrides, "train.epochs=1"]), tmp_path / "resumed")
    summary = train_run(load_config(tiny_overrides), tmp_path / "resumed")
    assert summary["epochs_completed"] == 2
    assert numbers(tmp_path / "straight") == numbers(tmp_path / "resumed")


def test_interrupted_run_is_marked_and_resumes(
    tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import capsroute.run.train as train_module

    real_run_epoch = train_module.run_epoch

    def interrupt_in_epoch_two(config, epoch, *args, **kwargs):  # type: ignore[no-untyped-def]
        if epoch == 2:
            raise KeyboardInterrupt
        return real_run_epoch(config, epoch, *args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", interrupt_in_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(train_module.InterruptedRunError):
        train_run(load_config(tiny_overrides), run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert len(read_rows(run / "metrics.csv")) == 1
    monkeypatch.setattr(train_module, "run_epoch", real_run_epoch)
    train_run(load_config(tiny_overrides), run)
    train_run(load_config(tiny_overrides), tmp_path / "straight")
    assert numbers(run) == numbers(tmp_path / "straight")


def test_completed_run_is_not_trained_again(tmp_path: Path, tiny_overrides: list[str]) -> None:
    run = tmp_path / "run"
    train_run(load_config(tiny_overrides), run)
    before = (run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.csv").read_bytes()
    summary = train_run(load_config(tiny_overrides), run)
    assert summary["status"] == "completed"
    after = (run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.csv").read_bytes()
    assert before == after


def test_refuses_to_resume_a_different_config(tmp_path: Path, tiny_overrides: list[str]) -> None:
    run = tmp_path / "run"
    train_run(load_config([*tiny_overrides, "train.epochs=1"]), run)
    # refused from the run's summary before anything is loaded or written
    with pytest.raises(RunDirError, match=r"routing.iterations: 3 -> 5"):
        train_run(load_config([*tiny_overrides, "routing.iterations=5"]), run)


def test_second_process_on_the_same_run_directory_is_refused(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with rundir.run_lock(run), pytest.raises(RunDirError, match="in use"):
        train_run(load_config(tiny_overrides), run)


def test_unwritable_output_directory_is_a_clear_error(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="cannot write"):
        train_run(load_config(tiny_overrides), blocker / "run")


def test_no_reconstruction_leaves_reconstruction_columns_empty(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    overrides = [*tiny_overrides, "model.reconstruction=false", "train.epochs=1"]
    train_run(load_config(overrides), tmp_path / "run")
    row = read_rows(tmp_path / "run" / "metrics.csv")[0]
    assert row["train_recon_loss"] == "" and row["test_recon_loss"] == ""
    assert float(row["test_loss"]) == pytest.approx(float(row["test_margin_loss"]))
