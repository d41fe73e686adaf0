"""Figures: one panel per dataset, a line per r, valid PNGs of a readable size."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from capsroute.report import plots


def epochs_frame(datasets: tuple[str, ...]) -> pd.DataFrame:
    """Two r values x two seeds x three epochs per dataset, with a known test accuracy."""
    rows = [
        {
            "run": f"{dataset}/r{r}/s{seed}",
            "dataset": dataset,
            "r": r,
            "seed": seed,
            "epoch": epoch,
            "test_acc": 0.5 + 0.1 * epoch + 0.01 * r + 0.001 * seed,
            "train_loss": 1.0 / epoch,
        }
        for dataset in datasets
        for r in (1, 3)
        for seed in (0, 1)
        for epoch in (1, 2, 3)
    ]
    return pd.DataFrame(rows)


def size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("log", [False, True])
def test_one_panel_per_dataset(tmp_path: Path, log: bool) -> None:
    one = plots.per_epoch(
        epochs_frame(("mnist",)), [], "train_loss", "loss", tmp_path / "1.png", log=log
    )
    two = plots.per_epoch(
        epochs_frame(("mnist", "cifar10")), [], "train_loss", "loss", tmp_path / "2.png", log=log
    )
    (w1, h1), (w2, h2) = size(one), size(two)
    assert h1 == h2 and w2 == pytest.approx(2 * w1, abs=2)
    assert 500 <= w1 <= 900 and 350 <= h1 <= 600


def test_metric_vs_r_and_routing_figures_are_written(tmp_path: Path) -> None:
    epochs = epochs_frame(("mnist",))
    runs = epochs[epochs["epoch"] == 3].rename(columns={"test_acc": "final_test_acc"})
    path = plots.metric_vs_r(runs, [], "final_test_acc", "final test accuracy", tmp_path / "a.png")
    assert size(path)[0] >= 500
    routing = pd.DataFrame(
        [
            {"run": f"r{r}/s{s}", "dataset": "mnist", "r": r, "seed": s, "epoch": e,
             "iteration": k, "delta_b": 0.1 / k, "entropy": 2.3 - 0.1 * k}
            for r in (1, 3) for s in (0, 1) for e in (1, 2) for k in range(1, r + 1)
        ]
    )  # fmt: skip
    path = plots.routing_at_last_epoch(routing, [], "delta_b", "|Δb|", tmp_path / "b.png", log=True)
    assert size(path)[0] >= 500
