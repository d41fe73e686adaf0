"""Training data as tensors: class-balanced subsets, splits, batches and augmentation.

A split is one `(N, C, H, W)` uint8 tensor (`capsroute.data.files` reads it), optionally on the
training device, instead of a `DataLoader` with PIL images and worker processes. Batches are cut
from a seeded permutation and augmented in one vectorised gather per batch. Every random number
is drawn on the CPU from the caller's `torch.Generator` and only then moved, so a run draws the
same batches, offsets and flips on CPU, CUDA or MPS. MultiMNIST splits are generated from MNIST
(`capsroute.data.multimnist`) and cached on disk.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from capsroute.config import DatasetConfig
from capsroute.data import canvas, multimnist
from capsroute.data.distort import distort_train, standardise
from capsroute.data.files import DATASET_INFO, ImageTensors, load_split
from capsroute.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch on the training device: images (B, C, H, W) float32 in [0, 1], labels (B,) or
    (B, 2) int64, and for MultiMNIST each digit alone, parts (B, 2, C, H, W) float32."""

    images: Tensor
    labels: Tensor
    parts: Tensor | None = None

    @property
    def recon_target(self) -> Tensor:
        """What the decoder reconstructs: the image, or (MultiMNIST) each digit alone."""
        return self.images if self.parts is None else self.parts


@dataclass
class Splits:
    """The three views a training run uses.

    `train` is trained on (augmented), `train_eval` is a fixed subset of `train` evaluated each
    epoch without augmentation (to measure the fit), and `test` is the held-out split. `val`,
    when `dataset.val_size` is set, is held out of the training split (never trained on) and
    chooses the best epoch instead of the test set.
    """

    train: ImageTensors
    train_eval: ImageTensors
    test: ImageTensors
    val: ImageTensors | None = None


# --------------------------------------------------------------------------------------------
# Subsets and splits
# --------------------------------------------------------------------------------------------


def balanced_subset(labels: Tensor, size: int, seed: int) -> Tensor:
    """Sorted int64 indices of a class-balanced random subset of `size` examples.

    Each of the K classes present gets `size // K` examples; the remainder goes one each to the
    first classes of a seeded class order. A class with too few examples contributes all of
    them and the shortfall is spread, again evenly, over the others. Which examples of a class
    are taken is a seeded permutation, so the result depends only on `labels`, `size`, `seed`.
    `size >= N` returns `arange(N)`.
    """
    if size < 0:
        raise ValueError(f"subset size must be >= 0, got {size}")
    labels = labels.detach().to("cpu", torch.int64)  # (N,)
    n = labels.shape[0]
    if size >= n:
        return torch.arange(n, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)  # (K,), (K,)
    class_order = torch.randperm(len(classes), generator=generator).tolist()
    permutation = torch.randperm(n, generator=generator)  # (N,) which examples come first
    quota = [0] * len(classes)
    capacity = counts.tolist()
    remaining = size
    while remaining > 0:  # water-filling: each pass either finishes or fills a class up
        open_classes = [k for k in class_order if quota[k] < capacity[k]]
        share, extra = divmod(remaining, len(open_classes))
        for rank, k in enumerate(open_classes):
            take = min(share + (rank < extra), capacity[k] - quota[k])
            quota[k] += take
            remaining -= take
    permuted_labels = labels[permutation]  # (N,)
    chosen = [
        permutation[permuted_labels == label][:count]
        for label, count in zip(classes.tolist(), quota, strict=True)
        if count
    ]
    return torch.sort(torch.cat(chosen)).values


def train_val_indices(
    labels: Tensor, train_size: int | None, val_size: int | None, seed: int
) -> tuple[Tensor, Tensor | None]:
    """Indices into the training split (N,) of the examples trained on and held out.

    Without `val_size`: `balanced_subset(train_size, seed)` (or all N) and no validation set,
    exactly as before validation existed. With it: the validation set is
    `balanced_subset(val_size, seed + 3)` of the whole split, so it depends on the seed and
    `val_size` only (the same for every run of a sweep with that seed, whatever r), and the
    training set is `balanced_subset(train_size, seed)` of the remaining examples, so the two
    never share an example. Both are sorted int64 tensors on the CPU.
    """
    labels = labels.detach().to("cpu", torch.int64)  # (N,)
    n = labels.shape[0]
    if val_size is None:
        everything = torch.arange(n, dtype=torch.int64)
        return everything if train_size is None else balanced_subset(labels, train_size, seed), None
    if val_size >= n:
        raise ConfigError(
            f"dataset.val_size={val_size} leaves no training images (the split holds {n})"
        )
    val = balanced_subset(labels, val_size, seed + 3)  # (val_size,)
    rest = torch.ones(n, dtype=torch.bool)
    rest[val] = False
    pool = torch.nonzero(rest).squeeze(1)  # (N - val_size,) sorted
    if train_size is None:
        return pool, val
    return pool[balanced_subset(labels[pool], train_size, seed)], val


def make_splits(cfg: DatasetConfig, seed: int, device: torch.device) -> Splits:
    """Load both splits, take the configured class-balanced subsets, and place them.

    `train` (and `val`): `train_val_indices(train_size, val_size, seed)` of the training split;
    without `val_size` that is the full split or `balanced_subset(train_size, seed)` of it.
    `test`: the full test split, or `balanced_subset(test_size, seed + 1)` of it.
    `train_eval`: `balanced_subset(min(train_eval_size, len(train)), seed + 2)` of `train`.
    Everything is moved to `device` when `cfg.on_device`, else kept on the CPU.
    """
    if cfg.name == "multimnist":
        return _placed(_multimnist_splits(cfg, seed), cfg, device)
    if cfg.name == "mnist40":
        return _placed(_mnist40_splits(cfg, seed), cfg, device)
    train_full = load_split(cfg, train=True)
    test_full = load_split(cfg, train=False)
    train_index, val_index = train_val_indices(
        train_full.labels, cfg.train_size, cfg.val_size, seed
    )
    train = (
        train_full
        if cfg.train_size is None and val_index is None
        else train_full.subset(train_index)
    )
    val = None if val_index is None else train_full.subset(val_index)
    test = (
        test_full
        if cfg.test_size is None
        else test_full.subset(balanced_subset(test_full.labels, cfg.test_size, seed + 1))
    )
    splits = Splits(train=train, train_eval=_train_eval(train, cfg, seed), test=test, val=val)
    return _placed(splits, cfg, device)


def _train_eval(train: ImageTensors, cfg: DatasetConfig, seed: int) -> ImageTensors:
    """The fixed subset of `train` evaluated each epoch: `balanced_subset(min(train_eval_size,
    len(train)), seed + 2)`, balanced by the (first) label."""
    eval_size = min(cfg.train_eval_size, len(train))
    return train.subset(balanced_subset(train.class_labels, eval_size, seed + 2))


def _placed(splits: Splits, cfg: DatasetConfig, device: torch.device) -> Splits:
    """The splits on `device` when `cfg.on_device`, else as they are (on the CPU)."""
    if not cfg.on_device:
        return splits
    return Splits(
        train=splits.train.to(device),
        train_eval=splits.train_eval.to(device),
        test=splits.test.to(device),
        val=None if splits.val is None else splits.val.to(device),
    )


# The generated MultiMNIST test set is the same for every run (so runs of any seed are compared
# on the same images); the training and validation sets are drawn from the run's seed.
MULTIMNIST_TEST_SEED = 2017
MULTIMNIST_TRAIN_SIZE = 60000  # `dataset.train_size` unset: as many overlays as MNIST digits
MULTIMNIST_TEST_SIZE = 10000


def _multimnist_splits(cfg: DatasetConfig, seed: int) -> Splits:
    """MultiMNIST splits generated from MNIST (cached in `cfg.cache_dir`), on the CPU.

    `train_size` / `test_size` / `val_size` count generated overlays. The validation overlays
    are made from `balanced_subset(val_size, seed + 3)` of the MNIST training digits and the
    training overlays from the others, so the two share no digit. Overlays pair digits of the
    same split only, as the paper does.
    """
    source = load_split(cfg, train=True)
    source_test = load_split(cfg, train=False)
    pool, val_index = train_val_indices(source.labels, None, cfg.val_size, seed)

    def generate(digits: ImageTensors, split: str, size: int, spec_seed: int) -> ImageTensors:
        spec = multimnist.MultiMNISTSpec(split, size, cfg.overlay_shift, spec_seed, cfg.combine)
        made = multimnist.load_or_generate(digits.images, digits.labels, spec, Path(cfg.cache_dir))
        parts = made.parts(digits.images).unsqueeze(2)  # (M, 2, 1, S, S)
        return ImageTensors(made.images, made.labels, parts)

    train = generate(source.subset(pool), "train", cfg.train_size or MULTIMNIST_TRAIN_SIZE, seed)
    val = None
    if val_index is not None:
        val = generate(source.subset(val_index), "val", len(val_index), seed + 3)
    test_size = cfg.test_size or MULTIMNIST_TEST_SIZE
    test = generate(source_test, "test", test_size, MULTIMNIST_TEST_SEED)
    return Splits(train=train, train_eval=_train_eval(train, cfg, seed), test=test, val=val)


def _mnist40_splits(cfg: DatasetConfig, seed: int) -> Splits:
    """mnist40 (Section 5.2, `capsroute.data.canvas`) on the CPU: training digits centred on
    40x40 (the batches shift them by up to `dataset.shift` px every epoch); validation digits
    and the expanded-MNIST test set placed once, from fixed seeds."""
    source = load_split(cfg, train=True)
    train_index, val_index = train_val_indices(source.labels, cfg.train_size, cfg.val_size, seed)
    train = ImageTensors(canvas.centre(source.images[train_index]), source.labels[train_index])
    val = None
    if val_index is not None:
        offsets = canvas.placement_offsets(len(source), canvas.VALIDATION_PLACEMENT_SEED)
        placed = canvas.place(source.images[val_index], offsets[val_index])
        val = ImageTensors(placed, source.labels[val_index])
    digits = load_split(cfg, train=False)
    test = ImageTensors(canvas.expanded_test(digits.images), digits.labels)
    if cfg.test_size is not None:
        test = test.subset(balanced_subset(test.labels, cfg.test_size, seed + 1))
    return Splits(train=train, train_eval=_train_eval(train, cfg, seed), test=test, val=val)


# --------------------------------------------------------------------------------------------
# Batches and augmentation
# --------------------------------------------------------------------------------------------


def output_size(cfg: DatasetConfig, size: int) -> int:
    """The side the model sees: `cfg.crop` if set (checked against the image size), else `size`."""
    if cfg.crop is None:
        return size
    if cfg.crop > size:
        raise ConfigError(
            f"dataset.crop={cfg.crop} is larger than the {cfg.name} images ({size} px)"
        )
    return cfg.crop


def input_shape(cfg: DatasetConfig) -> tuple[int, int, int]:
    """(C, H, W) of the images the model sees: the crop size if `cfg.crop`, else native size."""
    info = DATASET_INFO[cfg.name]
    size = multimnist.canvas_size(cfg.overlay_shift) if cfg.name == "multimnist" else info.size
    side = output_size(cfg, size)
    return (info.channels, side, side)


def num_batches(n: int, batch_size: int) -> int:
    """How many batches `n` examples make, the last partial one included."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return -(-n // batch_size)


@dataclass(frozen=True)
class Augmentation:
    """The random choices for one training batch, drawn on the CPU (`sample_augmentation`).

    `translate[b] = (dy, dx)` moves example b's content down by dy and right by dx, filling
    with zeros (the paper's "pad by `shift` and crop back"). `crop_offset[b] = (top, left)`
    is the corner of its `crop x crop` window in the translated image; `flip[b]` mirrors the
    result left-right. A None field means that step is off.
    """

    translate: Tensor | None = None  # (B, 2) int64 in [-shift, shift]
    crop: int | None = None  # output side when cropping
    crop_offset: Tensor | None = None  # (B, 2) int64 in [0, size - crop]
    flip: Tensor | None = None  # (B,) bool


def sample_augmentation(
    batch: int, cfg: DatasetConfig, size: int, generator: torch.Generator
) -> Augmentation:
    """Draw one batch's translations, crop corners and flips from `generator` (on the CPU).

    The draws happen in a fixed order (translation, crop, flip), each only when enabled, so the
    same generator state yields the same augmentation whatever device the images are on.
    """
    crop = output_size(cfg, size) if cfg.crop is not None else None
    translate = crop_offset = flip = None
    if cfg.shift > 0:
        translate = torch.randint(-cfg.shift, cfg.shift + 1, (batch, 2), generator=generator)
    if crop is not None:
        crop_offset = torch.randint(0, size - crop + 1, (batch, 2), generator=generator)
    if cfg.hflip:
        flip = torch.randint(0, 2, (batch,), generator=generator).bool()
    return Augmentation(translate=translate, crop=crop, crop_offset=crop_offset, flip=flip)


def augment(images: Tensor, aug: Augmentation) -> Tensor:
    """Apply `aug` to a batch in one vectorised gather on the images' device.

    Output pixel (i, j) of example b reads input pixel (i + top - dy, j' + left - dx), where
    j' = crop - 1 - j when flipped; reads outside the image give 0. Works on any dtype.
    """
    if aug.translate is None and aug.crop_offset is None and aug.flip is None:
        return images
    batch, channels, height, width = images.shape  # (B, C, H, W)
    device = images.device
    out_h = aug.crop if aug.crop is not None else height
    out_w = aug.crop if aug.crop is not None else width
    rows = torch.arange(out_h, device=device).expand(batch, out_h)  # (B, out_h)
    cols = torch.arange(out_w, device=device).expand(batch, out_w)  # (B, out_w)
    if aug.flip is not None:
        cols = torch.where(aug.flip.to(device)[:, None], out_w - 1 - cols, cols)
    if aug.crop_offset is not None:
        offset = aug.crop_offset.to(device)  # (B, 2)
        rows = rows + offset[:, :1]
        cols = cols + offset[:, 1:]
    if aug.translate is not None:
        shift = aug.translate.to(device)  # (B, 2)
        rows = rows - shift[:, :1]
        cols = cols - shift[:, 1:]
    row_ok = (rows >= 0) & (rows < height)  # (B, out_h)
    col_ok = (cols >= 0) & (cols < width)  # (B, out_w)
    rows = rows.clamp(0, height - 1)
    cols = cols.clamp(0, width - 1)
    out = images.gather(2, rows[:, None, :, None].expand(batch, channels, out_h, width))
    # (B, C, out_h, W)
    out = out.gather(3, cols[:, None, None, :].expand(batch, channels, out_h, out_w))
    # (B, C, out_h, out_w)
    inside = row_ok[:, None, :, None] & col_ok[:, None, None, :]  # (B, 1, out_h, out_w)
    return out.masked_fill(~inside, 0)


@functools.cache
def _unit_scale(device: torch.device) -> Tensor:
    """(256,) float32 table uint8 value -> [0, 1], divided on the CPU, kept on `device` (one
    copy per device for the whole process instead of a host-to-device copy per batch)."""
    return (torch.arange(256, dtype=torch.float32) / 255).to(device)


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], bit-identical on every device.

    A lookup in a table divided once on the CPU, because CUDA divides a tensor by a scalar as a
    multiplication by its reciprocal, which differs from CPU division in the last bit for some
    values. The result equals `images.cpu().float() / 255` exactly.
    """
    return _unit_scale(images.device)[images.long()]


def digit_parts(data: ImageTensors, index: Tensor | slice, device: torch.device) -> Tensor | None:
    """The MultiMNIST digits alone of the examples at `index`, float on `device` (else None)."""
    return None if data.parts is None else to_float(data.parts[index].to(device))


def train_batches(
    data: ImageTensors,
    cfg: DatasetConfig,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[Batch]:
    """One shuffled, augmented epoch of `Batch`es (images float32 (B, C, H', W') in [0, 1],
       labels int64 (B,), and MultiMNIST's digits alone), all on `device`.
    The order is `torch.randperm(N, generator=generator)`; the
       last partial batch is kept. Each batch is moved to `device` as uint8 and augmented there
       (translation by up to `cfg.shift` px, random `cfg.crop` window, random horizontal flip;
       with `cfg.distort="official"` then brightness, contrast and standardisation),
       with the random numbers drawn on the CPU from `generator`, which must be a CPU generator.
       Arguments are checked and the order drawn when this is called, not at the first batch.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"train_batches needs a CPU generator, got one on {generator.device}")
    num_batches(len(data), batch_size)  # validates batch_size
    size = data.images.shape[-1]
    output_size(cfg, size)  # fail before the first batch if the crop cannot fit
    order = torch.randperm(len(data), generator=generator)  # (N,) drawn now, at the call

    def batches() -> Iterator[Batch]:
        for start in range(0, len(data), batch_size):
            index = order[start : start + batch_size].to(data.images.device)  # (B,)
            images = data.images[index].to(device)  # (B, C, H, W) uint8
            labels = data.labels[index].to(device)  # (B,) or (B, 2)
            aug = sample_augmentation(int(index.shape[0]), cfg, size, generator)
            floats = to_float(augment(images, aug))  # (B, C, H', W') in [0, 1]
            if cfg.distort == "official":  # brightness, contrast, standardisation
                floats = distort_train(floats, generator)
            yield Batch(floats, labels, digit_parts(data, index, device))

    return batches()


def eval_batches(
    data: ImageTensors, cfg: DatasetConfig, batch_size: int, device: torch.device
) -> Iterator[Batch]:
    """The split in order, unaugmented except for a centre crop to `cfg.crop` when set.

    Yields `Batch`es (images float32 (B, C, H', W') in [0, 1], or standardised with
    `cfg.distort="official"`; labels int64) on `device`. The crop corner is placed as
    torchvision's `CenterCrop` places it.
    """
    num_batches(len(data), batch_size)
    height, width = data.images.shape[-2:]
    side = output_size(cfg, int(width))
    top = round((height - side) / 2.0)
    left = round((width - side) / 2.0)

    def batches() -> Iterator[Batch]:
        for start in range(0, len(data), batch_size):
            stop = start + batch_size
            images = data.images[start:stop, :, top : top + side, left : left + side]
            # (B, C, side, side) uint8
            labels = data.labels[start:stop].to(device)
            parts = digit_parts(data, slice(start, stop), device)
            floats = to_float(images.to(device))
            if cfg.distort == "official":  # the official test images are standardised too
                floats = standardise(floats)
            yield Batch(floats, labels, parts)

    return batches()
