"""The 40x40 canvas (mnist40) and the affNIST approximation generator (affine_mnist)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsroute.config import DatasetConfig
from capsroute.data import affine_mnist, canvas, viewpoint
from capsroute.data.batches import input_shape, make_splits

SPEC = affine_mnist.AffineSpec()


def digits(n: int, seed: int = 0) -> torch.Tensor:
    """(N, 1, 28, 28) uint8 digit-like blobs inside MNIST's 20x20 centre box."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 4:24, 4:24] = torch.randint(0, 256, (n, 1, 20, 20), generator=generator).to(
        torch.uint8
    )
    return images


def test_place_moves_the_centred_digit_without_losing_ink() -> None:
    images = digits(3)
    offsets = torch.tensor([[0, 0], [6, -6], [-3, 5]])
    placed = canvas.place(images, offsets)
    assert placed.shape == (3, 1, 40, 40)
    assert torch.equal(placed[0], canvas.centre(images)[0])
    assert torch.equal(placed[1, 0, 16:36, 4:24], images[1, 0, 4:24, 4:24])  # down 6, left 6
    assert torch.equal(placed[2, 0, 7:27, 15:35], images[2, 0, 4:24, 4:24])
    assert torch.equal(placed.sum((1, 2, 3)), images.long().sum((1, 2, 3)))
    first = canvas.placement_offsets(100, 7)
    assert torch.equal(first, canvas.placement_offsets(100, 7))
    assert int(first.abs().max()) <= canvas.MAX_SHIFT == 6


def test_generator_is_deterministic_and_draws_within_the_stated_ranges() -> None:
    images = digits(400)
    once, params = affine_mnist.generate(images, SPEC)
    again, params_again = affine_mnist.generate(images, SPEC)
    assert torch.equal(once, again) and torch.equal(params, params_again)
    other, _ = affine_mnist.generate(images, affine_mnist.AffineSpec(seed=SPEC.seed + 1))
    assert not torch.equal(once, other)
    assert params.shape == (400, len(affine_mnist.PARAM_NAMES))
    rotation, shear, scales = params[:, 0], params[:, 1], params[:, 2:4]
    assert rotation.abs().max() <= affine_mnist.ROTATION_DEG == 20
    assert shear.abs().max() <= affine_mnist.SHEAR == 0.2
    assert scales.min() >= affine_mnist.SCALE_MIN == 0.8 and scales.max() <= 1.2
    # the draws fill their ranges (400 uniform draws come within 10% of each end)
    assert rotation.max() > 18 and rotation.min() < -18 and shear.abs().max() > 0.18
    # the transformed digit box stays on the canvas: every pixel centre within +-19.5
    corners = affine_mnist._digit_corners(canvas.centre(images))
    moved = corners @ affine_mnist.linear_parts(params).transpose(1, 2) + params[:, None, 4:6]
    assert moved.abs().max() <= 19.5 + 1e-9
    assert params[:, 4:6].abs().max() > 5  # "significant translations"


def test_identity_and_pure_translation_render_exactly_as_placement_does() -> None:
    images = digits(2)
    centred = canvas.centre(images)
    identity = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]] * 2, dtype=torch.float64)
    assert torch.equal(affine_mnist.render(centred, identity), centred)
    shifted = identity.clone()
    shifted[:, 4:6] = torch.tensor([[3.0, -2.0], [-5.0, 4.0]])  # (tx, ty) = (right, down)
    expected = canvas.place(images, torch.tensor([[-2, 3], [4, -5]]))  # (dy, dx)
    assert torch.equal(affine_mnist.render(centred, shifted), expected)


def test_generation_is_cached_and_read_back_bit_for_bit(tmp_path: Path) -> None:
    images, labels = digits(20), torch.arange(20) % 10
    made = affine_mnist.load_or_generate(images, labels, tmp_path)
    files = list(tmp_path.glob("affine_mnist-*.pt"))
    assert len(files) == 1
    again = affine_mnist.load_or_generate(images, labels, tmp_path)
    assert torch.equal(made.images, again.images) and torch.equal(made.params, again.params)
    assert torch.equal(again.labels, labels)
    assert "approximation" in affine_mnist.describe() and "unverified" in affine_mnist.describe()


def test_mnist40_splits_on_real_mnist(data_root: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(
        name="mnist40", root=str(data_root), shift=6, train_size=300, test_size=200,
        val_size=100, train_eval_size=50, on_device=False, cache_dir=str(tmp_path),
    )  # fmt: skip
    assert input_shape(cfg) == (1, 40, 40)
    splits = make_splits(cfg, seed=0, device=torch.device("cpu"))
    assert splits.train.images.shape == (300, 1, 40, 40)
    assert splits.val is not None and splits.val.images.shape == (100, 1, 40, 40)
    # training digits are centred (the batches shift them); nothing outside the 28x28 box
    assert int(splits.train.images[:, :, :6].sum()) == 0
    # the expanded-MNIST test set is placed from a fixed seed: the same for every call
    again = viewpoint.evaluation_set(cfg, "mnist40", seed=0)
    assert canvas.EXPANDED_TEST_SEED != canvas.VALIDATION_PLACEMENT_SEED
    assert torch.equal(again.images, splits.test.images)
    assert int(splits.test.images[:, :, :6].sum()) > 0  # placed digits leave the centre box
    # the affine set is made from the same MNIST test digits, subset the same way
    affine = viewpoint.evaluation_set(cfg, "affine_mnist", seed=0)
    assert torch.equal(affine.labels, splits.test.labels)
    assert affine.images.shape == (200, 1, 40, 40)


@pytest.mark.parametrize("name", ["affine_mnist", "affnist"])
def test_test_only_sets_cannot_be_trained_on(name: str) -> None:
    from capsroute.config import Config, ConfigError

    with pytest.raises(ConfigError, match=f"dataset={name} is a test set only"):
        Config(dataset=DatasetConfig(name=name, shift=0))
