"""Routing controls (uniform, random coupling) and the new per-iteration diagnostics."""

from __future__ import annotations

import pytest
import torch

from capsroute.config import DatasetConfig, ModelConfig, RoutingConfig
from capsroute.data.files import ImageTensors
from capsroute.errors import ConfigError
from capsroute.nn.capsnet import CapsNet
from capsroute.run.evaluate import evaluate

TINY = ModelConfig(conv1_channels=8, primary_types=2, decoder_hidden=[16, 16])


def tiny_net(mode: str = "dynamic", iterations: int = 1, seed: int = 0) -> CapsNet:
    torch.manual_seed(seed)
    routing = RoutingConfig(iterations=iterations, mode=mode)
    return CapsNet((1, 28, 28), 10, TINY, routing)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_uniform_mode_equals_dynamic_routing_with_one_iteration_exactly() -> None:
    x, labels = images(), torch.arange(6)
    dynamic, uniform = tiny_net("dynamic"), tiny_net("uniform")
    uniform.load_state_dict(dynamic.state_dict())
    out_d = dynamic(x, labels, diagnostics=True)
    out_u = uniform(x, labels, diagnostics=True)
    assert torch.equal(out_d.lengths, out_u.lengths)
    assert torch.equal(out_d.reconstruction, out_u.reconstruction)
    assert torch.equal(out_u.routing.c, torch.full_like(out_u.routing.c, 0.1))
    # and the gradients are the same
    for out in (out_d, out_u):
        (out.lengths.sum() + out.reconstruction.sum()).backward()
    for (name, p_d), p_u in zip(dynamic.named_parameters(), uniform.parameters(), strict=True):
        assert torch.equal(p_d.grad, p_u.grad), name


def test_random_couplings_are_distributions_that_change_with_the_seed() -> None:
    net = tiny_net("random")
    x = images()
    net.digit.reseed(1)
    first = net(x).routing.c  # (B, N_in, 10)
    again = net(x).routing.c  # the stream goes on: fresh draws
    net.digit.reseed(1)
    repeated = net(x).routing.c
    net.digit.reseed(2)
    other = net(x).routing.c
    assert (first >= 0).all()
    torch.testing.assert_close(first.sum(dim=2), torch.ones(first.shape[:2]))
    assert torch.equal(first, repeated)
    assert not torch.equal(first, again) and not torch.equal(first, other)
    assert (first.amax(dim=2) > 0.1 + 1e-3).all()  # not uniform


def test_lower_temperature_polarises_random_couplings() -> None:
    x = images()
    stats = {}
    for temperature in (10.0, 0.05):
        torch.manual_seed(0)
        routing = RoutingConfig(1, mode="random", temperature=temperature)
        net = CapsNet((1, 28, 28), 10, TINY, routing)
        net.digit.reseed(0)
        routed = net(x, diagnostics=True).routing
        stats[temperature] = (float(routed.max_c[0]), float(routed.polarised[0]))
    assert stats[0.05][0] > 0.8 > 0.2 > stats[10.0][0]
    assert stats[0.05][1] > 0.5 and stats[10.0][1] == 0.0


def test_controls_need_one_iteration() -> None:
    with pytest.raises(ConfigError, match=r"routing\.mode=uniform has no agreement step"):
        RoutingConfig(iterations=3, mode="uniform")
    with pytest.raises(ConfigError, match=r"routing\.mode must be one of"):
        RoutingConfig(iterations=1, mode="learned")
    with pytest.raises(ValueError, match="r = 1 only"):
        tiny_net("random")(images(), iterations=3)


def fake_split(n: int = 20) -> ImageTensors:
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return ImageTensors(pixels, torch.arange(n) % 10)


@pytest.mark.parametrize("iterations", [1, 3])
def test_prediction_flips_per_iteration(iterations: int) -> None:
    net = tiny_net("dynamic", iterations)
    result = evaluate(
        net, fake_split(), DatasetConfig(), TINY, 8, torch.device("cpu"), diagnostics=True
    )
    flips = [row["flip"] for row in result.routing]
    assert len(flips) == iterations and flips[-1] == 0.0  # 0 when r = 1
    assert all(0.0 <= f <= 1.0 for f in flips)
    assert all(0.0 <= row["polarised"] <= 1.0 for row in result.routing)


def test_random_mode_evaluation_is_deterministic() -> None:
    net = tiny_net("random")
    args = (fake_split(), DatasetConfig(), TINY, 8, torch.device("cpu"))
    first = evaluate(net, *args)
    net(images())  # training-like draws in between do not change the evaluation
    assert evaluate(net, *args).loss == first.loss
