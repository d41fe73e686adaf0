"""Tests for capsroute.data: class-balanced subsets, splits, batches and augmentation.

Splits are made from synthetic MNIST files written in torchvision's format
(`tests.data.test_files.make_mnist`); batches from small random uint8 tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional

from capsroute.data.batches import (
    Augmentation,
    Batch,
    augment,
    balanced_subset,
    eval_batches,
    input_shape,
    make_splits,
    num_batches,
    sample_augmentation,
    train_batches,
)
from capsroute.data.files import ImageTensors, load_split
from capsroute.errors import ConfigError
from tests.data.test_files import cfg_for, make_mnist

CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------
# balanced_subset
# --------------------------------------------------------------------------------------------


def _skewed_labels(n: int = 1000) -> torch.Tensor:
    """(n,) labels over 10 classes with very different frequencies."""
    probs = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=torch.float64)
    return torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(0))


def test_balanced_subset_is_seeded_sorted_unique_and_balanced() -> None:
    labels = _skewed_labels()
    index = balanced_subset(labels, 95, seed=3)
    assert index.dtype == torch.int64 and len(index) == 95
    assert torch.equal(index, balanced_subset(labels, 95, seed=3))
    assert not torch.equal(index, balanced_subset(labels, 95, seed=4))
    assert torch.equal(index, torch.sort(index).values)
    assert len(torch.unique(index)) == 95
    counts = torch.bincount(labels[index], minlength=10)
    assert counts.max() - counts.min() <= 1


def test_balanced_subset_spreads_the_remainder_by_seed() -> None:
    labels = torch.arange(500) % 10
    favoured = set()
    for seed in range(6):
        counts = torch.bincount(labels[balanced_subset(labels, 23, seed)], minlength=10)
        assert sorted(counts.tolist()) == [2] * 7 + [3] * 3
        favoured.add(tuple(torch.nonzero(counts == 3).flatten().tolist()))
    assert len(favoured) > 1  # not always the same three classes


def test_balanced_subset_fills_from_other_classes_when_one_is_short() -> None:
    labels = torch.cat([torch.zeros(3, dtype=torch.int64), torch.arange(1, 10).repeat(100)])
    index = balanced_subset(labels, 50, seed=0)
    counts = torch.bincount(labels[index], minlength=10)
    assert len(index) == 50 and counts[0] == 3  # all of the short class
    assert counts[1:].max() - counts[1:].min() <= 1 and counts[1:].sum() == 47


def test_balanced_subset_of_everything_is_arange() -> None:
    labels = _skewed_labels(50)
    assert torch.equal(balanced_subset(labels, 50, 0), torch.arange(50))
    assert torch.equal(balanced_subset(labels, 80, 0), torch.arange(50))


# --------------------------------------------------------------------------------------------
# make_splits
# --------------------------------------------------------------------------------------------


def _rows(split: ImageTensors) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.images.cpu()}


def test_make_splits_sizes_balance_and_nesting(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=200, n_test=100)
    cfg = cfg_for("mnist", tmp_path, train_size=50, test_size=30, train_eval_size=20)
    splits = make_splits(cfg, seed=7, device=CPU)
    assert (len(splits.train), len(splits.test), len(splits.train_eval)) == (50, 30, 20)
    for split in (splits.train, splits.test, splits.train_eval):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.max() - counts.min() <= 1
    assert _rows(splits.train_eval) <= _rows(splits.train)
    assert _rows(splits.train) <= _rows(load_split(cfg, train=True))
    assert _rows(splits.test) <= _rows(load_split(cfg, train=False))

    again = make_splits(cfg, seed=7, device=CPU)
    assert torch.equal(again.train.images, splits.train.images)
    assert torch.equal(again.train_eval.labels, splits.train_eval.labels)
    assert not torch.equal(make_splits(cfg, seed=8, device=CPU).train.images, splits.train.images)


def test_make_splits_full_sets_and_capped_train_eval(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=60, n_test=20)
    splits = make_splits(cfg_for("mnist", tmp_path, train_eval_size=10000), 0, CPU)
    assert (len(splits.train), len(splits.test), len(splits.train_eval)) == (60, 20, 60)
    assert torch.equal(splits.train_eval.images, splits.train.images)


@pytest.mark.parametrize("on_device", [True, False])
def test_make_splits_placement(tmp_path: Path, on_device: bool) -> None:
    make_mnist(tmp_path)
    splits = make_splits(cfg_for("mnist", tmp_path, on_device=on_device), 0, torch.device("meta"))
    expected = "meta" if on_device else "cpu"  # "meta" stands in for an accelerator here
    for split in (splits.train, splits.train_eval, splits.test):
        assert split.images.device.type == expected and split.labels.device.type == expected


# --------------------------------------------------------------------------------------------
# Batches and augmentation
# --------------------------------------------------------------------------------------------


def toy_split(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> ImageTensors:
    """Random images whose label is their index, so a batch says where each example came from."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        1, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8
    )
    return ImageTensors(images, torch.arange(n))


def translated(image: torch.Tensor, dy: int, dx: int, shift: int) -> torch.Tensor:
    """The paper's augmentation by hand: zero-pad by `shift`, take the window moved by (dy, dx)."""
    height, width = image.shape[-2:]
    padded = functional.pad(image, (shift, shift, shift, shift))
    return padded[..., shift - dy : shift - dy + height, shift - dx : shift - dx + width]


def test_train_batches_shapes_dtype_range_and_last_partial_batch() -> None:
    split = toy_split(10)
    cfg = cfg_for("mnist", "unused", shift=2)
    batches = list(train_batches(split, cfg, 4, torch.Generator().manual_seed(0), CPU))
    assert [len(y) for _, y, _ in batches] == [4, 4, 2] and num_batches(10, 4) == 3
    for x, y, _ in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert y.dtype == torch.int64 and x.device.type == "cpu"
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_train_batches_without_augmentation_return_the_images() -> None:
    split = toy_split(9, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=0)
    for x, y, _ in train_batches(split, cfg, 4, torch.Generator().manual_seed(1), CPU):
        assert torch.equal(x, split.images[y].float() / 255)


def test_epoch_visits_every_example_once() -> None:
    split = toy_split(23, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    seen = torch.cat([y for _, y, _ in train_batches(split, cfg, 5, torch.Generator(), CPU)])
    assert torch.equal(torch.sort(seen).values, torch.arange(23))


def test_same_generator_seed_gives_identical_batches() -> None:
    split = toy_split(20, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)

    def epoch(seed: int) -> list[Batch]:
        return list(train_batches(split, cfg, 8, torch.Generator().manual_seed(seed), CPU))

    first, second, other = epoch(5), epoch(5), epoch(6)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, second, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])


def test_augment_translation_is_a_zero_padded_shifted_copy() -> None:
    images = toy_split(4).images  # (4, 1, 28, 28)
    offsets = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, -2]])
    out = augment(images, Augmentation(translate=offsets))
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], translated(images[b], dy, dx, shift=2))
    # spelled out for example 0: content moves down 2 and left 1; vacated rows/cols are zero
    assert out[0, 0, 5, 7] == images[0, 0, 3, 8]
    assert (out[0, 0, :2] == 0).all() and (out[0, 0, :, -1] == 0).all()


def test_train_batches_translate_by_the_offsets_drawn_from_the_generator() -> None:
    split = toy_split(12)
    cfg = cfg_for("mnist", "unused", shift=2)
    x, y, _ = next(iter(train_batches(split, cfg, 6, torch.Generator().manual_seed(3), CPU)))
    replay = torch.Generator().manual_seed(3)  # draw order: permutation, then per-batch offsets
    assert torch.equal(torch.randperm(12, generator=replay)[:6], y)
    offsets = sample_augmentation(6, cfg, 28, replay).translate
    assert (
        offsets is not None and offsets.abs().max() <= 2 and len(torch.unique(offsets, dim=0)) > 1
    )
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(x[b], translated(split.images[y[b]], dy, dx, shift=2).float() / 255)


def test_crop_and_flip_give_windows_of_the_source() -> None:
    split = toy_split(40, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=0, crop=24, hflip=True)
    plain_at, mirrored_at = [], []
    for x, y, _ in train_batches(split, cfg, 16, torch.Generator().manual_seed(0), CPU):
        assert x.shape[1:] == (3, 24, 24)
        sources = split.images[y].float() / 255  # (B, 3, 32, 32)
        windows = sources.unfold(2, 24, 1).unfold(3, 24, 1)  # (B, 3, 9, 9, 24, 24)
        plain = (windows == x[:, :, None, None]).all(5).all(4).all(1)  # (B, 9, 9)
        mirrored = (windows == x.flip(-1)[:, :, None, None]).all(5).all(4).all(1)  # (B, 9, 9)
        assert (plain.flatten(1).any(1) | mirrored.flatten(1).any(1)).all()
        plain_at += plain.flatten(1).float().argmax(1)[plain.flatten(1).any(1)].tolist()
        mirrored_at += mirrored.flatten(1).float().argmax(1)[mirrored.flatten(1).any(1)].tolist()
    assert plain_at and mirrored_at  # both flip states occur
    assert len(set(plain_at + mirrored_at)) > 5  # and the window moves


def test_augment_composes_translation_crop_and_flip() -> None:
    images = toy_split(3, channels=3, size=32).images  # (3, 3, 32, 32)
    aug = Augmentation(
        translate=torch.tensor([[1, -2], [-2, 0], [2, 2]]),
        crop=24,
        crop_offset=torch.tensor([[0, 8], [3, 1], [8, 0]]),
        flip=torch.tensor([True, False, True]),
    )
    out = augment(images, aug)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.uint8
    for b in range(3):
        (dy, dx), (top, left) = aug.translate[b].tolist(), aug.crop_offset[b].tolist()
        expected = translated(images[b], dy, dx, shift=2)[:, top : top + 24, left : left + 24]
        if aug.flip[b]:
            expected = expected.flip(-1)
        assert torch.equal(out[b], expected)


def test_eval_batches_are_in_order_with_a_centre_crop() -> None:
    split = toy_split(10, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    batches = list(eval_batches(split, cfg, 4, CPU))
    assert torch.equal(torch.cat([y for _, y, _ in batches]), torch.arange(10))
    x = torch.cat([x for x, _, _ in batches])
    assert torch.equal(x, split.images[:, :, 4:28, 4:28].float() / 255)
    uncropped = torch.cat([x for x, _, _ in eval_batches(split, cfg_for("cifar10", "u"), 3, CPU)])
    assert torch.equal(uncropped, split.images.float() / 255)


def test_input_shape_follows_the_crop() -> None:
    assert input_shape(cfg_for("mnist", "u")) == (1, 28, 28)
    assert input_shape(cfg_for("cifar10", "u", crop=24)) == (3, 24, 24)
    with pytest.raises(ConfigError, match=r"dataset\.crop=40"):
        input_shape(cfg_for("cifar10", "u", crop=40))
    with pytest.raises(ConfigError, match=r"dataset\.crop=40"):
        train_batches(
            toy_split(4, 3, 32), cfg_for("cifar10", "u", crop=40), 2, torch.Generator(), CPU
        )


def test_image_tensors_subset_and_validation() -> None:
    split = toy_split(6)
    part = split.subset(torch.tensor([4, 1]))
    assert len(part) == 2 and part.labels.tolist() == [4, 1]
    assert torch.equal(part.images[0], split.images[4])
    with pytest.raises(ValueError, match="uint8"):
        ImageTensors(split.images.float(), split.labels)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        ImageTensors(split.images, split.labels[:5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmented_batches_are_identical_on_cuda_and_cpu() -> None:
    split = toy_split(50, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    cuda = torch.device("cuda")
    on_cpu = train_batches(split, cfg, 16, torch.Generator().manual_seed(9), CPU)
    on_gpu = train_batches(split.to(cuda), cfg, 16, torch.Generator().manual_seed(9), cuda)
    for cpu_batch, gpu_batch in zip(on_cpu, on_gpu, strict=True):
        assert gpu_batch.images.device.type == "cuda"
        assert torch.equal(cpu_batch.images, gpu_batch.images.cpu())
        assert torch.equal(cpu_batch.labels, gpu_batch.labels.cpu())
    evaluated_cpu = torch.cat([x for x, _, _ in eval_batches(split, cfg, 16, CPU)])
    evaluated_gpu = torch.cat([x for x, _, _ in eval_batches(split, cfg, 16, cuda)])
    assert torch.equal(evaluated_cpu, evaluated_gpu.cpu())
