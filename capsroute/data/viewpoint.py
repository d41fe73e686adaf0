"""The 40x40 viewpoint-robustness sets (Sabour et al. 2017, Section 5.2) as splits and test sets.

- `mnist40` (trained on): MNIST training digits centred on the 40x40 canvas, randomly shifted
  by up to 6 px per axis in every epoch (`dataset.shift=6`, see `capsroute.data.canvas`); the
  validation split and the "expanded MNIST" test set place each digit once, at a shift drawn
  from a fixed seed, so every run sees the same held-out images.
- `affine_mnist` (evaluated on): the MNIST test digits under one seeded affine transformation
  each, an APPROXIMATION of affNIST (`capsroute.data.affine_mnist`).
- `affnist` (evaluated on): the real affNIST test file (`capsroute.data.affnist`).

`evaluation_set` gives the test set of any of them for a run trained on another, subset exactly
as the run subset its own test set (`dataset.test_size`: `balanced_subset(seed + 1)`), so a
mnist40 run and its affine_mnist score use the same MNIST test digits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from capsroute.config import EVAL_ONLY_DATASETS, DatasetConfig
from capsroute.data import affine_mnist, affnist, canvas
from capsroute.data.batches import Splits, _train_eval, balanced_subset, train_val_indices
from capsroute.data.files import ImageTensors, _resolve_root, load_split

VIEWPOINT_DATASETS = ("mnist40", *EVAL_ONLY_DATASETS)
# Fixed placement seeds: the expanded-MNIST test set and the validation placements are the
# same for every run (the validation digits themselves depend on the run's seed).
EXPANDED_TEST_SEED = 2017
VALIDATION_PLACEMENT_SEED = 2018


def expanded_mnist_test(cfg: DatasetConfig) -> ImageTensors:
    """All 10,000 MNIST test digits, each placed once on 40x40 (seed `EXPANDED_TEST_SEED`)."""
    digits = load_split(cfg, train=False)
    offsets = canvas.placement_offsets(len(digits), EXPANDED_TEST_SEED)
    return ImageTensors(canvas.place(digits.images, offsets), digits.labels)


def full_test_set(cfg: DatasetConfig, name: str) -> ImageTensors:
    """The whole test split of viewpoint dataset `name`, read or generated with `cfg`'s root
    and cache folder (images (N, 1, 40, 40) uint8 on the CPU)."""
    if name == "mnist40":
        return expanded_mnist_test(cfg)
    if name == "affine_mnist":
        digits = load_split(cfg, train=False)
        made = affine_mnist.load_or_generate(digits.images, digits.labels, Path(cfg.cache_dir))
        return ImageTensors(made.images, made.labels)
    images, labels = affnist.load(_resolve_root(cfg.root), train=False)
    return ImageTensors(images.contiguous(), labels.contiguous())


def evaluation_set(run_dataset: DatasetConfig, name: str, seed: int) -> ImageTensors:
    """Test set `name` for a run trained with `run_dataset` and `seed`, subset as the run's
    own test set was (same `test_size`, same `balanced_subset(seed + 1)`)."""
    cfg = dataclasses.replace(run_dataset, name=name)
    full = full_test_set(cfg, name)
    if run_dataset.test_size is None:
        return full
    return full.subset(balanced_subset(full.labels, run_dataset.test_size, seed + 1))


def mnist40_splits(cfg: DatasetConfig, seed: int) -> Splits:
    """mnist40 splits on the CPU: centred training digits (shifted per epoch by the batches'
    augmentation), validation and test digits placed once from fixed seeds."""
    source = load_split(cfg, train=True)
    train_index, val_index = train_val_indices(source.labels, cfg.train_size, cfg.val_size, seed)
    train = source.subset(train_index)
    train = ImageTensors(canvas.centre(train.images), train.labels)
    val = None
    if val_index is not None:
        digits = source.subset(val_index)
        offsets = canvas.placement_offsets(len(source), VALIDATION_PLACEMENT_SEED)[val_index]
        val = ImageTensors(canvas.place(digits.images, offsets), digits.labels)
    test = evaluation_set(cfg, "mnist40", seed)
    return Splits(train=train, train_eval=_train_eval(train, cfg, seed), test=test, val=val)
