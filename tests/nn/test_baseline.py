"""The paper's baseline CNN: exact parameter count, output and objective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsroute.config import config_to_dict
from capsroute.config_history import with_added_keys
from capsroute.errors import ConfigError
from capsroute.hydra_app import load_config
from capsroute.nn import build_model
from capsroute.nn.baseline import BaselineCNN, paper_parameter_count
from capsroute.nn.capsnet import CapsNet
from capsroute.run.train import train_run


def test_mnist_parameter_count_is_the_papers_35_4_million() -> None:
    """conv 1->256, 256->256, 256->128 (5x5, 'same'): 6,656 + 1,638,656 + 819,328;
    FC 100,352 (28 x 28 x 128) -> 328: 32,915,784; 328 -> 192: 63,168; 192 -> 10: 1,930."""
    net = BaselineCNN((1, 28, 28), 10)
    assert net.parameter_counts() == {"total": 35_445_522, "without_decoder": 35_445_522}
    assert paper_parameter_count((1, 28, 28)) == 35_445_522
    assert round(35_445_522 / 1e6, 1) == 35.4  # the paper's "35.4M"


def test_cifar10_crops_give_a_smaller_first_fc_layer() -> None:
    """24x24x3 crops: 24 x 24 x 128 = 73,728 inputs to the 328-unit layer."""
    net = BaselineCNN((3, 24, 24), 10)
    assert net.parameter_counts()["total"] == paper_parameter_count((3, 24, 24)) == 26_725_650


def test_scores_loss_and_dropout() -> None:
    torch.manual_seed(0)
    net = BaselineCNN((1, 12, 12), 10, channels=(4, 4, 2), hidden=(8, 6))
    images, labels = torch.rand(5, 1, 12, 12), torch.tensor([0, 1, 2, 3, 4])
    out = net(images, labels, iterations=3, diagnostics=True)  # routing arguments are ignored
    assert out.scores.shape == (5, 10) and out.reconstruction is None and out.routing is None
    parts = out.loss(images, labels)
    expected = torch.nn.functional.cross_entropy(out.scores, labels)
    assert torch.equal(parts.total, expected) and parts.reconstruction is None
    parts.total.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()  # dropout off: the same input gives the same logits
    assert torch.equal(net(images).scores, net(images).scores)


def test_model_group_selects_the_baseline_with_the_papers_sizes() -> None:
    config = load_config(["model=baseline_cnn"])
    assert (config.model.kind, config.model.reconstruction) == ("baseline_cnn", False)
    net = build_model(config)
    assert isinstance(net, BaselineCNN)
    assert net.parameter_counts()["total"] == 35_445_522
    assert isinstance(build_model(load_config([])), CapsNet)  # the default is unchanged
    with pytest.raises(ConfigError, match="has no decoder"):
        load_config(["model=baseline_cnn", "model.reconstruction=true"])
    with pytest.raises(ConfigError, match=r"unknown model\.kind"):
        load_config(["model.kind=resnet"])


def test_old_configs_read_as_capsnets() -> None:
    """A config saved before model.kind existed is a CapsNet's (resume, reports)."""
    saved = config_to_dict(load_config([]))
    for key in ("kind", "cnn_channels", "cnn_kernel", "cnn_hidden", "cnn_dropout"):
        del saved["model"][key]
    assert with_added_keys(saved) == config_to_dict(load_config([]))


def test_the_same_loop_trains_the_baseline(tmp_path: Path, tiny_overrides: list[str]) -> None:
    small = ["model=baseline_cnn", "model.cnn_channels=[8,8,4]", "model.cnn_hidden=[16,8]"]
    summary = train_run(load_config([*tiny_overrides, *small]), tmp_path / "cnn")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    small_net = BaselineCNN((1, 28, 28), 10, channels=(8, 8, 4), hidden=(16, 8))
    assert summary["parameters"]["total"] == small_net.parameter_counts()["total"]
    rows = (tmp_path / "cnn" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[3] == ""  # no reconstruction loss column value
