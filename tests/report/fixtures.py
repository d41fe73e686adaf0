"""Run directories with known numbers, written by the project's own writers (rundir + train).

`write_run` lays out what `capsroute train` leaves behind (`.hydra/config.yaml`,
`metrics.csv`, `routing.csv`, `summary.json`) from a few per-epoch lists, so report tests can
check aggregates against numbers worked out by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from capsroute import io as capsroute_io
from capsroute.config import Config, config_to_dict
from capsroute.run import rundir
from capsroute.run.rundir import METRICS_COLUMNS, ROUTING_COLUMNS

BASE_CONFIG = config_to_dict(Config())


def run_config(dataset: str, r: int, seed: int, epochs: int, **changes: Any) -> dict[str, Any]:
    """The saved config of a run; `changes` maps dotted keys (e.g. routing.grad) to values."""
    config = copy.deepcopy(BASE_CONFIG)
    config["dataset"]["name"] = dataset
    config["routing"]["iterations"] = r
    config["seed"] = seed
    config["train"]["epochs"] = epochs
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def metrics_rows(
    test_acc: Sequence[float],
    train_eval_acc: Sequence[float],
    test_loss: Sequence[float],
    train_loss: Sequence[float] | None = None,
    epoch_seconds: Sequence[float] | None = None,
    images_per_s: Sequence[float] | None = None,
    val_acc: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """metrics.csv rows; columns a test does not care about get plausible fixed values. The
    validation columns are empty unless `val_acc` is given (a run with dataset.val_size)."""
    n = len(test_acc)
    train_loss = train_loss or [0.5 / (epoch + 1) for epoch in range(n)]
    epoch_seconds = epoch_seconds or [1.0] * n
    images_per_s = images_per_s or [1000.0] * n
    return [
        {
            "epoch": epoch + 1,
            "train_loss": train_loss[epoch],
            "train_margin_loss": train_loss[epoch] * 0.9,
            "train_recon_loss": 100.0,
            "train_acc": train_eval_acc[epoch],
            "train_eval_acc": train_eval_acc[epoch],
            "train_eval_loss": test_loss[epoch] * 0.9,
            "test_acc": test_acc[epoch],
            "test_loss": test_loss[epoch],
            "test_margin_loss": test_loss[epoch] * 0.9,
            "test_recon_loss": 100.0,
            "val_acc": val_acc[epoch] if val_acc else None,
            "val_loss": test_loss[epoch] if val_acc else None,
            "val_margin_loss": test_loss[epoch] * 0.9 if val_acc else None,
            "lr": 0.001,
            "epoch_seconds": epoch_seconds[epoch],
            "images_per_s": images_per_s[epoch],
            "eval_seconds": 0.1,
        }
        for epoch in range(n)
    ]


def routing_rows(epochs: int, r: int) -> list[dict[str, Any]]:
    """routing.csv rows: |Δb| shrinking (empty at the last iteration, never applied, as
    training writes it) and entropy falling with the iteration, measured on the test set."""
    return [
        {
            "epoch": epoch,
            "iteration": k,
            "split": "test",
            "delta_b": 0.1 / (k * epoch) if k < r else None,
            "entropy": 2.302585 - 0.1 * (k - 1),
            "max_c": 0.1 + 0.05 * (k - 1),
        }
        for epoch in range(1, epochs + 1)
        for k in range(1, r + 1)
    ]


def write_run(
    run_dir: Path,
    config: dict[str, Any],
    metrics: list[dict[str, Any]],
    status: str = rundir.STATUS_COMPLETED,
    error: str | None = None,
    hydra: bool = True,
) -> Path:
    """A complete run directory for `config` with these metrics rows."""
    r, epochs = config["routing"]["iterations"], len(metrics)
    capsroute_io.write_csv(run_dir / rundir.METRICS_FILE, metrics, METRICS_COLUMNS)
    capsroute_io.write_csv(run_dir / rundir.ROUTING_FILE, routing_rows(epochs, r), ROUTING_COLUMNS)
    summary: dict[str, Any] = {
        "status": status,
        "dataset": config["dataset"]["name"],
        "iterations": r,
        "seed": config["seed"],
        "epochs": config["train"]["epochs"],
        "epochs_completed": epochs,
        "error": error,
    }
    if metrics:
        last, best = metrics[-1], max(metrics, key=lambda row: row["test_acc"])
        summary.update(
            final_test_acc=last["test_acc"],
            final_train_eval_acc=last["train_eval_acc"],
            best_test_acc=best["test_acc"],
            best_epoch=best["epoch"],
        )
    if hydra:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    else:
        summary["config"] = config
    capsroute_io.write_json(run_dir / rundir.SUMMARY_FILE, summary)
    return run_dir
