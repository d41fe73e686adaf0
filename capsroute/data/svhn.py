"""SVHN (cropped digits, format 2): the MATLAB files `train_32x32.mat` and `test_32x32.mat`.

Each holds `X`, a 32 x 32 x 3 x N uint8 array (height, width, RGB, image), and `y`, an N x 1
array of labels 1..10 where 10 stands for the digit 0. They sit in `<root>/svhn/` (torchvision's
`SVHN` reads them from the root it is given, which is that folder). Only the 73,257-image
`train` split is used, as in the paper ("the small training set"); `extra` is not.

With `dataset.verify` (the default) they load through `torchvision.datasets.SVHN`, which checks
each file's published md5 on every load; without it, `scipy.io.loadmat` reads them directly and
the shapes and labels are checked here, so tiny or re-packed copies load too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsroute.data.source import Reader, corrupt_error, md5_error, one_line, torchvision_datasets

FOLDER = "svhn"
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SIZE = 32
ZERO_LABEL = 10  # the files' label for the digit 0


def _split(train: bool) -> str:
    return "train" if train else "test"


def _md5_failures(root: Path) -> list[str]:
    """The SVHN files under `root` that are missing or fail torchvision's md5 check."""
    from torchvision.datasets.utils import check_integrity

    split_list = torchvision_datasets().SVHN.split_list  # split -> [url, filename, md5]
    return [
        f"{FOLDER}/{filename}"
        for split, filename in FILES.items()
        if not check_integrity(str(root / FOLDER / filename), split_list[split][2])
    ]


def read_mat(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """One split's `.mat` file without the md5 check: (N, 3, 32, 32) uint8, (N,) int64 0..9."""
    rel = f"{FOLDER}/{FILES[_split(train)]}"
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(root / rel), variable_names=["X", "y"])
    except Exception as exc:  # MatReadError, ValueError, OSError on a damaged file
        raise corrupt_error("svhn", root, f"{rel}: not a MATLAB file ({one_line(exc)})") from exc
    pixels, raw = mat.get("X"), mat.get("y")
    if pixels is None or raw is None:
        raise corrupt_error("svhn", root, f"{rel}: needs the variables X and y")
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[:3] != (SIZE, SIZE, 3):
        raise corrupt_error(
            "svhn",
            root,
            f"{rel}: X must be uint8 32 x 32 x 3 x N, got {pixels.dtype} {pixels.shape}",
        )
    raw = np.asarray(raw).reshape(-1)
    labels = raw.astype(np.int64)
    if raw.shape[0] != pixels.shape[3] or not np.array_equal(labels, raw):
        raise corrupt_error(
            "svhn", root, f"{rel}: y must hold {pixels.shape[3]} whole numbers, got {raw.shape}"
        )
    labels[labels == ZERO_LABEL] = 0
    images = np.ascontiguousarray(pixels.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read(root: Path, train: bool, verify: bool) -> tuple[Tensor, Tensor]:
    """One split: through torchvision with the md5 check, or through scipy without it."""
    if not verify:
        return read_mat(root, train)
    try:
        dataset = torchvision_datasets().SVHN(
            str(root / FOLDER), split=_split(train), download=False
        )
    except Exception as exc:  # "Dataset not found or corrupted", scipy read errors, ...
        failing = _md5_failures(root)
        if failing:
            raise md5_error("svhn", root, failing) from exc
        raise corrupt_error("svhn", root, one_line(exc)) from exc
    images = torch.from_numpy(np.ascontiguousarray(dataset.data))  # (N, 3, 32, 32) uint8
    return images, torch.as_tensor(dataset.labels, dtype=torch.int64)


def _fetch(root: Path) -> None:
    for split in FILES:
        torchvision_datasets().SVHN(str(root / FOLDER), split=split, download=True)


SVHN = Reader(
    "svhn",
    FOLDER,
    tuple(f"{FOLDER}/{name}" for name in FILES.values()),
    _read,
    _fetch,
    md5_failures=_md5_failures,
)
