"""Official-code mode's layers: SAME padding, PrimaryCaps routed over its types, the official
initialisation, the official margin-loss scale, and the parameter counts of the presets."""

from __future__ import annotations

import pytest
import torch

from capsroute.config import ModelConfig, RoutingConfig
from capsroute.hydra_app import load_config
from capsroute.nn import build_model
from capsroute.nn.capsnet import CapsNet, PrimaryCaps
from capsroute.nn.losses import capsule_loss
from capsroute.nn.official import output_size, pad_for, same_padding
from capsroute.routing import squash

# The official graph's tfprof totals (README "Paper mode and official-code mode")
OFFICIAL_PARAMETERS = {
    "official_mnist": (8_215_728, 1152),
    "official_cifar10": (22_476_448, 9216),
    "official_multimnist": (11_361_968, 3200),
}


def test_same_padding_is_tensorflows_uneven_split() -> None:
    assert same_padding(24, 9, 1) == (4, 4)
    assert same_padding(24, 9, 2) == (3, 4)  # total 7: the smaller half first
    assert same_padding(28, 9, 2) == (3, 4)
    assert same_padding(5, 1, 1) == (0, 0)
    assert pad_for(24, 24, 9, 2, "same") == (3, 4, 3, 4)
    assert pad_for(24, 24, 9, 2, "valid") == (0, 0, 0, 0)
    assert [output_size(24, 9, s, "same") for s in (1, 2)] == [24, 12]
    assert [output_size(24, 9, s, "valid") for s in (1, 2)] == [16, 8]


@pytest.mark.parametrize("preset", sorted(OFFICIAL_PARAMETERS))
def test_official_presets_have_the_official_parameter_counts(preset: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(load_config([f"experiment={preset}"]))
    total, primary = OFFICIAL_PARAMETERS[preset]
    assert isinstance(model, CapsNet)
    assert model.parameter_counts()["total"] == total
    assert model.digit.n_in == primary


def test_same_padding_shapes_through_the_network() -> None:
    """24x24 CIFAR crops with SAME: conv1 keeps 24x24, PrimaryCaps halves it to 12x12, and the
    padded input equals zeros placed 3 before and 4 after (TensorFlow's split)."""
    cfg = ModelConfig(conv1_channels=8, primary_types=2, padding="same", reconstruction=False)
    model = CapsNet((3, 24, 24), 10, cfg, RoutingConfig(iterations=1))
    assert model.digit.n_in == 2 * 12 * 12
    images = torch.rand(2, 3, 24, 24)
    out = model(images)
    assert out.capsules.shape == (2, 10, 16)
    features = torch.relu(model.conv1(torch.nn.functional.pad(images, (4, 4, 4, 4))))
    assert features.shape == (2, 8, 24, 24)
    padded = torch.zeros(2, 8, 31, 31)
    padded[:, :, 3:27, 3:27] = features
    conv = model.primary.conv
    expected = torch.nn.functional.conv2d(padded, conv.weight, conv.bias, stride=2)
    got = model.primary.convolve(torch.nn.functional.pad(features, (3, 4, 3, 4)))
    assert expected.shape == (2, 16, 12, 12)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("leaky", [False, True])
def test_primary_routing_scales_by_one_over_types(leaky: bool) -> None:
    """The official conv_slim_capsule: squash(conv(x) / T + b), T = types (+1 with the leak),
    a bias-free convolution and one bias per (type, unit) added after the scaling."""
    cfg = ModelConfig(conv1_channels=6, primary_types=3, primary_routing=True)
    model = CapsNet((1, 28, 28), 10, cfg, RoutingConfig(leaky=leaky))
    primary = model.primary
    assert primary.routed_over == 3 + int(leaky) and primary.conv.bias is None
    x = torch.rand(2, 6, 20, 20)
    conv = torch.nn.functional.conv2d(x, primary.conv.weight, stride=2)  # (2, 24, 6, 6)
    assert primary.bias is not None
    s = conv / (3 + int(leaky)) + primary.bias[:, None, None]
    expected = squash(s.view(2, 3, 8, 6, 6).permute(0, 1, 3, 4, 2).reshape(2, -1, 8))
    torch.testing.assert_close(primary(x), expected)
    plain = PrimaryCaps(6, 3, 8, 9, 2)  # paper mode: the conv's own bias, no scaling
    assert plain.bias is None and plain.conv.bias is not None
    same_count = sum(p.numel() for p in plain.parameters())
    assert same_count == sum(p.numel() for p in primary.parameters())


def test_official_init_statistics() -> None:
    """variables.py: truncated normals (cut at 2 std, so the std is ~0.88 of sigma), sigma
    0.05 for conv1 and 0.1 elsewhere, every bias 0.1; W_ij keeps model.weight_std."""
    torch.manual_seed(0)
    cfg = ModelConfig(conv1_channels=32, primary_types=8, init="official", primary_routing=True)
    cfg.digit_bias = True
    model = CapsNet((1, 28, 28), 10, cfg, RoutingConfig())
    truncated = 0.8796  # std of N(0, 1) truncated to [-2, 2]
    weights = {
        "conv1": (model.conv1.weight, 0.05),
        "primary": (model.primary.conv.weight, 0.1),
        "W_ij": (model.digit.weight, 0.1),
    }
    assert model.decoder is not None
    for index, layer in enumerate(model.decoder.net):
        if isinstance(layer, torch.nn.Linear):
            weights[f"decoder{index}"] = (layer.weight, 0.1)
            assert torch.all(layer.bias == 0.1)
    for name, (weight, sigma) in weights.items():
        assert weight.abs().max() <= 2 * sigma + 1e-7, name
        assert abs(weight.std().item() / sigma - truncated) < 0.03, name
        assert abs(weight.mean().item()) < 0.02 * sigma, name
    for bias in (model.conv1.bias, model.primary.bias, model.digit.bias):
        assert bias is not None and torch.all(bias == 0.1)
    small = ModelConfig(conv1_channels=32, primary_types=8)  # init=torch
    default = CapsNet((1, 28, 28), 10, small, RoutingConfig())
    assert default.conv1.bias is not None and not torch.all(default.conv1.bias == 0.1)


@pytest.mark.parametrize("two_digits", [False, True])
def test_official_margin_loss_is_the_official_formula(two_digits: bool) -> None:
    """layers.py::_margin_loss as written: logits = |v| - 0.5, 0.5 x positive cost +
    0.5 x 0.5 x negative cost, tf.reduce_mean over batch and classes; the reconstruction
    term (0.0005 x per-image sum of squares, averaged over the batch) is unchanged."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.rand(6, 10, generator=generator, dtype=torch.float64)
    labels = torch.tensor([[1, 2], [3, 4], [0, 9], [5, 6], [7, 8], [2, 0]])
    labels = labels if two_digits else labels[:, 0]
    onehot = torch.zeros(6, 10, dtype=torch.float64)
    onehot.scatter_(1, labels.view(6, -1), 1.0)
    logits = lengths - 0.5
    positive = onehot * (logits < 0.4) * (logits - 0.4) ** 2
    negative = (1 - onehot) * (logits > -0.4) * (logits + 0.4) ** 2
    official = (0.5 * positive + 0.5 * 0.5 * negative).mean()
    recon = torch.rand(6, 784, generator=generator, dtype=torch.float64)
    images = torch.rand(6, 1, 28, 28, generator=generator, dtype=torch.float64)
    if two_digits:
        recon, images = recon[:, None].expand(6, 2, 784), images[:, None].expand(6, 2, 1, 28, 28)
    parts = capsule_loss(lengths, recon, images, labels, ModelConfig(loss_form="official"))
    torch.testing.assert_close(parts.margin, official)
    assert parts.reconstruction is not None
    torch.testing.assert_close(parts.total, official + 0.0005 * parts.reconstruction)
    paper = capsule_loss(lengths, None, images, labels, ModelConfig())
    torch.testing.assert_close(paper.margin, 20 * official)  # the paper's Eq. 4: 20x
