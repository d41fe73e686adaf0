"""Official-code mode end to end, through the real `capsroute` entry point on tiny real data:
each official preset trains one epoch, and a `routing.leaky=false,true` sweep is a study that
`capsroute report` groups by the switch. official_cifar10 (every switch but add_clip) runs in
`make test`; official_mnist and official_multimnist are marked slow (`make test-all`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from capsroute.cli.info import run_info
from capsroute.hydra_app import load_config
from tests.cli.test_cli import run_cli
from tests.conftest import TINY_MODEL

# 256 training / 128 test images, one epoch, batch 64, the tiny model
TINY_ONE_EPOCH = [
    "dataset.train_size=256",
    "dataset.test_size=128",
    "dataset.train_eval_size=64",
    "train.batch_size=64",
    "train.eval_batch_size=128",
    "train.epochs=1",
    "train.progress=false",
    *TINY_MODEL,
]


def test_info_shows_the_official_cifar10_parameter_count(tmp_path: Path) -> None:
    """`capsroute info experiment=official_cifar10`: 22,476,448, the official graph's count
    (shapes only: the network is built on the meta device, and no data are read)."""
    config = load_config(["experiment=official_cifar10", f"dataset.root={tmp_path}"])
    with torch.device("meta"):
        details = run_info(config)
    assert details["parameters"] == {"total": 22_476_448, "without_decoder": 22_476_448}
    assert details["primary_capsules"] == 9216 and details["input_shape"] == [3, 24, 24]


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        pytest.param(
            "official_mnist",
            {"dataset.name": "mnist", "routing.leaky": False},
            marks=pytest.mark.slow,  # its switches are all in official_cifar10 (unit-tested)
        ),
        (
            "official_cifar10",
            {
                "dataset.name": "cifar10",
                "dataset.distort": "official",
                "model.padding": "same",
                "model.reconstruction": False,
                "routing.leaky": True,
            },
        ),
        pytest.param(
            "official_multimnist",
            {"dataset.combine": "add_clip", "model.reconstruction": True},
            marks=pytest.mark.slow,  # add_clip is unit-tested in tests/data/test_distort.py
        ),
    ],
)
def test_official_preset_trains_end_to_end(
    tmp_path: Path, data_root: Path, preset: str, expected: dict[str, object]
) -> None:
    # the shared CIFAR-10 copy has a 1,000-image test batch: torchvision's md5 check fails
    result = run_cli(
        "train",
        f"experiment={preset}",
        f"dataset.root={data_root}",
        "dataset.verify=false",
        *TINY_ONE_EPOCH,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run.name.startswith("official-")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    config = summary["config"]
    official = {
        "model.primary_routing": True,
        "model.init": "official",
        "model.loss_form": "official",
        "model.digit_bias": True,
        "train.lr_min": 1e-6,
        **expected,
    }
    for dotted, value in official.items():
        group, key = dotted.split(".")
        assert config[group][key] == value, dotted
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 1 and 0.0 <= metrics["test_acc"].iloc[0] <= 1.0


def test_report_groups_a_leaky_routing_sweep(tmp_path: Path, data_root: Path) -> None:
    args = ["sweep", "--iters", "1", "--name", "leak", f"dataset.root={data_root}"]
    result = run_cli(*args, *TINY_ONE_EPOCH, "routing.leaky=false,true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "outputs" / "sweeps" / "leak"
    report = run_cli("report", str(sweep), "--format", "csv", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    summary = pd.read_csv(sweep / "report" / "summary.csv")
    assert "routing.leaky" in summary.columns
    assert sorted(summary["routing.leaky"].astype(str)) == ["False", "True"]
    assert summary["n"].tolist() == [1, 1]
