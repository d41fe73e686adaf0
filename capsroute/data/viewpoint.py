"""The 40x40 viewpoint-robustness test sets (Sabour et al. 2017, Section 5.2).

- `mnist40` (trained on, splits in `capsroute.data.batches`): MNIST digits on the 40x40 canvas
  (`capsroute.data.canvas`); its test set is the "expanded MNIST" test set.
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

from capsroute.config import DatasetConfig
from capsroute.data import affine_mnist, affnist, canvas
from capsroute.data.batches import balanced_subset
from capsroute.data.files import ImageTensors, load_split


def full_test_set(cfg: DatasetConfig, name: str) -> ImageTensors:
    """The whole test split of viewpoint dataset `name`, read or generated with `cfg`'s root
    and cache folder (images (N, 1, 40, 40) uint8 on the CPU)."""
    if name == "affnist":
        images, labels = affnist.load(Path(cfg.root).expanduser().resolve(), train=False)
        return ImageTensors(images.contiguous(), labels.contiguous())
    digits = load_split(dataclasses.replace(cfg, name=name), train=False)
    if name == "mnist40":
        return ImageTensors(canvas.expanded_test(digits.images), digits.labels)
    made = affine_mnist.load_or_generate(digits.images, digits.labels, Path(cfg.cache_dir))
    return ImageTensors(made.images, made.labels)


def evaluation_set(run_dataset: DatasetConfig, name: str, seed: int) -> ImageTensors:
    """Test set `name` for a run trained with `run_dataset` and `seed`, subset as the run's
    own test set was (same `test_size`, same `balanced_subset(seed + 1)`)."""
    full = full_test_set(run_dataset, name)
    if run_dataset.test_size is None:
        return full
    return full.subset(balanced_subset(full.labels, run_dataset.test_size, seed + 1))
