"""The dataset registry, and reading any registered dataset's split into tensors.

Every dataset fits in memory as uint8 (MNIST 55 MB, CIFAR-10 180 MB, smallNORB at 48x48
112 MB, SVHN 300 MB), so a split is read into one `(N, C, H, W)` uint8 tensor (`ImageTensors`);
`capsroute.data.batches` cuts subsets and batches from it.

`DATASET_INFO` names, per dataset, its geometry and the `Reader` of its on-disk format (one
module each: `mnist_idx` for MNIST and Fashion-MNIST, `cifar`, `svhn`, `smallnorb`). Datasets
without files of their own (MultiMNIST) name the dataset they are generated from
(`DatasetInfo.source`). This module drives the readers: presence, downloads, the validation
every split passes, and `capsroute data check`. Every failure a user can fix becomes a
`DataError` with one line naming the dataset, the absolute root looked at, the file, what is
wrong and the download command; raw torchvision / pickle / parser exceptions never escape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from capsroute.config import DATASETS, DatasetConfig
from capsroute.data import affnist, canvas, cifar, mnist_idx, multimnist, smallnorb, svhn
from capsroute.data.source import (
    Reader,
    corrupt_error,
    download_error,
    is_download_failure,
    missing_error,
    missing_files,
    one_line,
)
from capsroute.errors import ConfigError, DataError


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: image geometry as read, class count, and its reader.

    `size` is the side of the images a split holds (smallNORB: after the reader's resize to 48);
    crops and MultiMNIST's canvas are applied later (`capsroute.data.batches.input_shape`).
    """

    channels: int
    size: int
    num_classes: int
    reader: Reader
    targets: int = 1  # labels per image: 2 for MultiMNIST (two digits, both to be found)
    source: str | None = None  # generated from this dataset's files (MultiMNIST from MNIST)

    @property
    def files(self) -> tuple[str, ...]:
        """The files, relative to the data root, that must exist (the reader's)."""
        return self.reader.files


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(1, 28, 10, mnist_idx.MNIST),
    "cifar10": DatasetInfo(3, 32, 10, cifar.CIFAR10),
    # the paper's 36 px canvas; `input_shape` reads overlay_shift
    "multimnist": DatasetInfo(
        1, multimnist.MNIST_SIZE + 2 * 4, 10, mnist_idx.MNIST, targets=2, source="mnist"
    ),
    "fashion_mnist": DatasetInfo(1, 28, 10, mnist_idx.FASHION_MNIST),
    "svhn": DatasetInfo(3, 32, 10, svhn.SVHN),
    "smallnorb": DatasetInfo(smallnorb.CHANNELS, smallnorb.SIZE, 5, smallnorb.SMALLNORB),
    # Section 5.2: MNIST placed on 40x40 (capsroute.data.canvas) and an affNIST approximation
    # generated from MNIST (capsroute.data.affine_mnist), both from the MNIST files; affNIST's
    # own files (capsroute.data.affnist; its "train" split is affNIST's validation file, for
    # `data check` only, never trained on)
    "mnist40": DatasetInfo(1, canvas.CANVAS, 10, mnist_idx.MNIST, source="mnist"),
    "affine_mnist": DatasetInfo(1, canvas.CANVAS, 10, mnist_idx.MNIST, source="mnist"),
    "affnist": DatasetInfo(1, canvas.CANVAS, 10, affnist.AFFNIST),
}
assert tuple(DATASET_INFO) == DATASETS, "DATASET_INFO must cover config.DATASETS"


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class ImageTensors:
    """One split held as tensors: uint8 images and int64 labels on the same device.

    MultiMNIST has two labels per image and keeps each digit alone on its own canvas in
    `parts`, the targets of the per-digit reconstructions.
    """

    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64, or (N, 2) for MultiMNIST
    parts: Tensor | None = None  # (N, 2, C, H, W) uint8: each digit of an overlay alone

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} "
                f"{self.images.dtype}"
            )
        if self.labels.dim() not in (1, 2) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"labels must be (N,) or (N, T) int64, got {tuple(self.labels.shape)} "
                f"{self.labels.dtype}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.parts is not None and (
            self.parts.dtype != torch.uint8
            or tuple(self.parts.shape) != (*self.labels.shape, *self.images.shape[1:])
        ):
            raise ValueError(
                f"parts must be (N, T, C, H, W) uint8 matching labels and images, got "
                f"{tuple(self.parts.shape)} {self.parts.dtype}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_labels(self) -> Tensor:
        """(N,) one label per image to balance subsets by: the first digit's for MultiMNIST."""
        return self.labels if self.labels.dim() == 1 else self.labels[:, 0]

    def to(self, device: torch.device | str) -> ImageTensors:
        """The same split on `device` (no copy when it is already there)."""
        parts = None if self.parts is None else self.parts.to(device)
        return ImageTensors(self.images.to(device), self.labels.to(device), parts)

    def subset(self, index: Tensor) -> ImageTensors:
        """The examples at `index` (int64 indices, any device), as a new split on this device."""
        index = index.to(self.images.device)
        parts = None if self.parts is None else self.parts[index]
        return ImageTensors(self.images[index], self.labels[index], parts)


@dataclass(frozen=True)
class DatasetStatus:
    """What `capsroute data check` reports for one dataset under a root."""

    name: str
    present: bool  # every file of DatasetInfo.files exists
    loadable: bool  # both splits load and parse (with or without the md5 check, as asked)
    train_count: int | None  # number of training images, None when not loadable
    test_count: int | None  # number of test images, None when not loadable
    message: str  # "ok ..." or the one-line DataError a load would raise


def _resolve_root(root: str | Path) -> Path:
    """The absolute root a user sees in messages (`~` expanded, relative to the working dir)."""
    return Path(root).expanduser().resolve()


def download(name: str, root: str | Path) -> None:
    """Fetch `name` into `root` with its reader, skipping files already there.

    The readers check what is present first (torchvision: the raw files exist, or their md5s
    match so re-packed copies are replaced). Any network or file-system failure becomes a
    one-line `DataError` telling the user how to get the files from elsewhere.
    """
    if name not in DATASET_INFO:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASET_INFO)}")
    name = DATASET_INFO[name].source or name  # MultiMNIST: its MNIST files
    reader, path = DATASET_INFO[name].reader, _resolve_root(root)
    try:
        reader.fetch(path)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        if is_download_failure(exc):
            raise download_error(name, path, exc) from exc
        # Downloaded (or already there) but not loadable: report it as loading would.
        _load(name, path, train=True, download=False, verify=reader.md5_failures is not None)
        raise corrupt_error(name, path, one_line(exc)) from exc


def _fetch_for_load(name: str, root: Path, verify: bool) -> None:
    """With `dataset.download`: fetch files that are missing or, verified, fail their md5."""
    reader = DATASET_INFO[name].reader
    missing = missing_files(reader, root)
    bad = [] if missing or not verify or reader.md5_failures is None else reader.md5_failures(root)
    if not missing and not bad:
        return
    try:
        download(name, root)
    except DataError as err:
        if missing:
            raise
        cause = one_line(err.__cause__) if err.__cause__ is not None else str(err)
        raise DataError(
            f"{name} files under {root} fail torchvision's md5 check and re-downloading them "
            f"failed (no network?: {cause}); if they are re-packed copies that still parse, "
            f"pass dataset.verify=false to load them without the check"
        ) from err


def _load(name: str, root: Path, train: bool, download: bool, verify: bool) -> ImageTensors:
    """One full split of `name` under the absolute `root`, validated, on the CPU."""
    info = DATASET_INFO[name]
    if download:
        _fetch_for_load(name, root, verify)
    missing = missing_files(info.reader, root)
    if missing:
        raise missing_error(info.reader, root, missing)
    images, labels = info.reader.read(root, train, verify)
    split = "train" if train else "test"
    expected = (info.channels, info.size, info.size)
    if tuple(images.shape[1:]) != expected or images.dtype != torch.uint8:
        raise corrupt_error(
            name,
            root,
            f"{split} images are {tuple(images.shape[1:])} {images.dtype}, "
            f"expected {expected} uint8",
        )
    if labels.shape[0] != images.shape[0]:
        raise corrupt_error(
            name, root, f"{images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise corrupt_error(
            name,
            root,
            f"{split} labels outside 0..{info.num_classes - 1}: "
            f"min {int(labels.min())}, max {int(labels.max())}",
        )
    if images.shape[0] == 0:
        raise corrupt_error(name, root, f"the {split} split holds no images")
    return ImageTensors(images.contiguous(), labels.contiguous())


def load_split(cfg: DatasetConfig, train: bool) -> ImageTensors:
    """The full train or test split of `cfg.name` under `cfg.root`: uint8 images on the CPU.

    Downloads first when `cfg.download` is set and files are missing (or, with `cfg.verify`,
    fail the md5 check). Raises `DataError` with one actionable line on any failure.
    """
    name = DATASET_INFO[cfg.name].source or cfg.name  # MultiMNIST is made from MNIST's files
    return _load(name, _resolve_root(cfg.root), train, cfg.download, cfg.verify)


def check(root: str | Path, verify: bool) -> list[DatasetStatus]:
    """Presence and loadability of every known dataset under `root` (never downloads).

    `verify` applies torchvision's md5 check where files have one (CIFAR-10, SVHN).
    Both splits are loaded in full, so a truncated or garbled file is caught here.
    """
    path = _resolve_root(root)
    statuses = []
    for name, info in DATASET_INFO.items():
        if info.source is not None:
            continue  # generated from another dataset's files, which are checked themselves
        missing = missing_files(info.reader, path)
        if missing:
            error = missing_error(info.reader, path, missing)
            statuses.append(DatasetStatus(name, False, False, None, None, str(error)))
            continue
        try:
            train = _load(name, path, train=True, download=False, verify=verify)
            test = _load(name, path, train=False, download=False, verify=verify)
        except DataError as error:
            statuses.append(DatasetStatus(name, True, False, None, None, str(error)))
            continue
        note = " (md5 not checked)" if info.reader.md5_failures and not verify else ""
        message = f"ok: {len(train)} train and {len(test)} test images{note}"
        statuses.append(DatasetStatus(name, True, True, len(train), len(test), message))
    return statuses
