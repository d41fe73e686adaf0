"""The Section 7 presets (experiment=paper_svhn, paper_smallnorb): their grid and settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsroute import hydra_app
from tests.study.test_presets import cells, plan


@pytest.mark.parametrize(
    ("name", "epochs", "shape"),
    [("svhn", 524, (64, 16, 6, 8, 2, None)), ("smallnorb", 1579, (256, 32, 8, 16, 0, 32))],
)
def test_section7_presets_are_three_r3_seeds_in_the_papers_network(
    tmp_path: Path, name: str, epochs: int, shape: tuple
) -> None:
    sweep = plan(tmp_path, f"experiment=paper_{name}", "dataset.verify=false")
    assert cells(sweep) == [(name, 3, seed, f"s{seed}") for seed in range(3)]
    config = hydra_app.load_config([f"experiment=paper_{name}"])
    model, data = config.model, config.dataset
    assert (
        model.conv1_channels, model.primary_types, model.primary_dim, model.digit_dim,
        data.shift, data.crop,
    ) == shape  # fmt: skip
    assert (data.name, data.train_size, data.hflip, config.routing.iterations) == (
        name, None, False, 3,
    )  # fmt: skip
    # the official MNIST command's 300,000 steps of batch 128 on this training set
    train_images = {"svhn": 73257, "smallnorb": 24300}[name]
    assert config.train.epochs == round(300_000 / -(-train_images // 128))  # rounded, as Table 1
    assert (config.train.lr, config.train.lr_decay_rate, config.train.batch_size) == (
        0.001, 0.96, 128,
    )  # fmt: skip
