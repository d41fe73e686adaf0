"""`model.standardize`: per-image standardisation before the network (TF's rule)."""

from __future__ import annotations

import math

import torch

from capsroute.hydra_app import load_config
from capsroute.nn import build_model
from capsroute.nn.standardize import standardize_images


def test_each_image_gets_zero_mean_and_unit_variance() -> None:
    images = (
        torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    )  # std 0.17 > the floor 1/sqrt(128)
    out = standardize_images(images)
    flat = out.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(3), atol=1e-5)
    # a flat image: the deviation is floored at 1/sqrt(pixels) (TF), giving zeros, not NaN
    flat_image = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(standardize_images(flat_image), torch.zeros_like(flat_image), atol=1e-5)
    one = torch.zeros(1, 1, 2, 2)
    one[0, 0, 0, 0] = 1.0  # on TF's 0-255 scale: mean 63.75, std 255 sqrt(3)/4 > floor 1/2
    expected = 0.75 / max(math.sqrt(3) / 4, 1 / 2 / 255)
    assert math.isclose(float(standardize_images(one)[0, 0, 0, 0]), expected, rel_tol=1e-6)


def test_smallnorb_standardises_and_its_predictions_ignore_brightness_and_contrast() -> None:
    config = load_config(["dataset=smallnorb", "model.conv1_channels=8", "model.primary_types=2"])
    assert config.model.standardize and not load_config(["dataset=svhn"]).model.standardize
    torch.manual_seed(0)
    model = build_model(config).eval()
    images = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        plain = model(images, reconstruct=False).lengths
        rescaled = model(images * 0.5 + 0.2, reconstruct=False).lengths
    assert torch.allclose(plain, rescaled, atol=1e-5)
