"""dataset.distort=official (the official CIFAR-10 pipeline) and MultiMNIST's add_clip overlay."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from capsroute.config import DatasetConfig
from capsroute.data import multimnist
from capsroute.data.batches import eval_batches, sample_augmentation, train_batches
from capsroute.data.distort import (
    BRIGHTNESS_DELTA,
    photometric,
    sample_photometric,
    standardise,
)
from capsroute.data.files import ImageTensors
from capsroute.errors import ConfigError


def test_standardise_is_tensorflows_per_image_standardization() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 24, 24, generator=generator, dtype=torch.float64)
    out = standardise(images)
    flat = out.flatten(1)
    torch.testing.assert_close(flat.mean(dim=1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(flat.std(dim=1, correction=0), torch.ones(4, dtype=torch.float64))
    # a flat image: std 0 -> divided by 1/sqrt(N) on the 0-255 scale, so stays 0, finite
    flat_image = torch.full((1, 3, 24, 24), 0.5, dtype=torch.float64)
    assert torch.equal(standardise(flat_image), torch.zeros_like(flat_image))
    # near-flat: the floor 1/sqrt(1728) applies to the 0-255 values, as in TensorFlow
    tiny = flat_image.clone()
    tiny[0, 0, 0, 0] += 1e-6
    scaled = tiny * 255
    expected = (scaled - scaled.mean()) * math.sqrt(3 * 24 * 24)
    torch.testing.assert_close(standardise(tiny), expected)


def test_photometric_is_brightness_then_per_channel_contrast() -> None:
    images = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    delta = torch.tensor([0.1, -0.2], dtype=torch.float64)
    factor = torch.tensor([0.5, 1.5], dtype=torch.float64)
    out = photometric(images, delta, factor)
    for b in range(2):
        shifted = images[b] + delta[b]
        mean = shifted.mean(dim=(1, 2), keepdim=True)
        torch.testing.assert_close(out[b], (shifted - mean) * factor[b] + mean)
    drawn_delta, drawn_factor = sample_photometric(10_000, torch.Generator().manual_seed(1))
    assert drawn_delta.abs().max() <= BRIGHTNESS_DELTA and drawn_delta.abs().max() > 0.24
    assert drawn_factor.min() >= 0.2 and drawn_factor.max() < 1.8


def _cifar_like(n: int = 8) -> ImageTensors:
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) % 10)


def test_official_distortion_in_training_and_standardisation_at_test() -> None:
    data = _cifar_like()
    paper = DatasetConfig(name="cifar10", shift=0, crop=24, hflip=True)
    official = DatasetConfig(name="cifar10", shift=0, crop=24, hflip=True, distort="official")

    def first_train(cfg: DatasetConfig) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return next(train_batches(data, cfg, 8, generator, torch.device("cpu"))).images

    plain, distorted = first_train(paper), first_train(official)
    assert plain.min() >= 0 and plain.max() <= 1  # the paper's [0, 1] pixels
    torch.testing.assert_close(distorted.flatten(1).mean(1), torch.zeros(8), atol=1e-5, rtol=0)
    assert torch.equal(first_train(official), distorted)  # deterministic from the generator
    # the same crops and flips, then brightness and contrast drawn next from the generator
    generator = torch.Generator().manual_seed(3)
    torch.randperm(8, generator=generator)
    sample_augmentation(8, official, 32, generator)
    delta, factor = sample_photometric(8, generator)
    expected = standardise(photometric(plain, delta, factor))
    torch.testing.assert_close(distorted, expected)
    assert not torch.allclose(distorted, standardise(plain), atol=1e-3)  # contrast changed it
    test_plain = next(eval_batches(data, paper, 8, torch.device("cpu"))).images
    test_official = next(eval_batches(data, official, 8, torch.device("cpu"))).images
    torch.testing.assert_close(test_official, standardise(test_plain))


def test_official_distortion_is_for_cifar10_only() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.distort=official"):
        DatasetConfig(name="mnist", distort="official")
    with pytest.raises(ConfigError, match=r"dataset\.combine"):
        DatasetConfig(combine="sum")


def test_add_clip_overlay_sums_and_clips_at_255(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(4)
    source = torch.randint(0, 256, (40, 1, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.arange(40) % 10
    spec = multimnist.MultiMNISTSpec("train", 16, 4, 0, combine="add_clip")
    made = multimnist.load_or_generate(source, labels, spec, tmp_path)
    parts = made.parts(source).int()  # (16, 2, 36, 36)
    expected = parts.sum(dim=1).clamp_max(255).to(torch.uint8)
    assert torch.equal(made.images[:, 0], expected)
    assert (parts.sum(dim=1) > 255).any()  # the clip happened somewhere
    as_max = multimnist.MultiMNISTSpec("train", 16, 4, 0)  # the default: pixel-wise max
    assert multimnist.cache_key(as_max, "x") != multimnist.cache_key(spec, "x")
    maxed = multimnist.load_or_generate(source, labels, as_max, tmp_path)
    assert torch.equal(maxed.images[:, 0], parts.amax(dim=1).to(torch.uint8))
