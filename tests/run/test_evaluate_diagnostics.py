"""The evaluator's diagnostic pass: extra numbers, never different results."""

from __future__ import annotations

import math

import pytest
import torch

from capsroute.config import DatasetConfig, ModelConfig, RoutingConfig
from capsroute.data.files import ImageTensors
from capsroute.nn.capsnet import CapsNet
from capsroute.run.evaluate import evaluate

TINY = ModelConfig(conv1_channels=8, primary_types=2, decoder_hidden=[16, 32])


def tiny_data(n: int = 12) -> ImageTensors:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n, dtype=torch.int64) % 10)


@pytest.mark.parametrize(("mode", "r"), [("dynamic", 3), ("random", 1)])
def test_diagnostics_leave_accuracy_loss_and_random_draws_unchanged(mode: str, r: int) -> None:
    torch.manual_seed(0)
    routing = RoutingConfig(iterations=r, mode=mode)
    model = CapsNet((1, 28, 28), 10, TINY, routing)
    args = (tiny_data(), DatasetConfig(), TINY, 5, torch.device("cpu"))
    plain = evaluate(model, *args)  # 3 batches: a replay that consumed random draws would
    diagnosed = evaluate(model, *args, diagnostics=True)  # change batches 2 and 3
    assert (diagnosed.accuracy, diagnosed.loss) == (plain.accuracy, plain.loss)
    assert diagnosed.margin_loss == plain.margin_loss
    rows = diagnosed.routing
    assert [row["iteration"] for row in rows] == list(range(1, r + 1))
    # the last update is never applied: not recorded; the earlier ones are
    assert rows[-1]["delta_b"] is None
    assert all(row["delta_b"] > 0 for row in rows[:-1])
    for row in rows:
        assert 0.0 <= row["entropy_w"] <= math.log(10) + 1e-6
        assert -1.0 <= row["agreement_w"] <= 1.0
    if mode == "random":  # random couplings: far from uniform, weighted or not
        assert rows[0]["max_c_w"] > 0.15 and rows[0]["max_c"] > 0.15
    else:  # first iteration: uniform couplings, entropy ln 10 weighted or not
        assert rows[0]["entropy_w"] == pytest.approx(math.log(10), abs=1e-5)
