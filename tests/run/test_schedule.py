"""The learning-rate schedule: continuous decay, floored at train.lr_min (official: 1e-6)."""

from __future__ import annotations

import math

import pytest
import torch

from capsroute.config import TrainConfig
from capsroute.run.schedule import lr_multiplier


def test_paper_schedule_decays_without_a_floor() -> None:
    factor = lr_multiplier(TrainConfig())
    assert factor(0) == 1.0
    assert factor(2000) == pytest.approx(0.96)
    assert factor(1000) == pytest.approx(0.96**0.5)  # continuous, not a staircase
    assert 1e-3 * factor(600_000) == pytest.approx(4.8e-9, rel=0.05)  # ~4.8e-9 at 600k


def test_official_floor_holds_the_lr_at_one_millionth() -> None:
    factor = lr_multiplier(TrainConfig(lr_min=1e-6))
    crossing = 2000 * math.log(1000) / math.log(1 / 0.96)  # ~338,433 steps
    assert 1e-3 * factor(300_000) == pytest.approx(1e-3 * 0.96**150)  # MNIST's last step
    assert 1e-3 * factor(int(crossing) - 1000) > 1e-6
    assert 1e-3 * factor(int(crossing) + 1) == pytest.approx(1e-6)
    assert 1e-3 * factor(600_000) == pytest.approx(1e-6)


def test_the_floor_drives_the_optimiser() -> None:
    """Through LambdaLR as training uses it: lr 1e-3, decay 0.5 per step, floor 1e-4."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    config = TrainConfig(lr_decay_rate=0.5, lr_decay_steps=1, lr_min=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 1e-4, 1e-4])
