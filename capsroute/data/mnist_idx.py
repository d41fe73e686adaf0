"""MNIST and Fashion-MNIST: four IDX files read through torchvision.

Both sit in torchvision's layout, `<root>/<Class>/raw/` with the uncompressed files
`{train,t10k}-{images-idx3,labels-idx1}-ubyte`. torchvision checks no md5 on load (only on
download, for the `.gz` archives) but needs all four files even for one split. When its IDX
parser fails, `_diagnose` re-reads the headers to name the file and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsroute.data.source import Reader, corrupt_error, one_line, torchvision_datasets

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension


def _files(folder: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/{split}-{kind}"
        for split in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )


def idx_problem(path: Path, magic: int, ndim: int) -> str | None:
    """What is wrong with an IDX file's header or length, or None if they look right.

    IDX (as in the MNIST distribution): big-endian int32 magic (0x08 = uint8, then the number of
    dimensions: 2051 for images, 2049 for labels), one big-endian int32 per dimension, then the
    uint8 payload.
    """
    header_size = 4 * (ndim + 1)
    with open(path, "rb") as handle:
        header = handle.read(header_size)
    if len(header) < header_size:
        return f"only {len(header)} bytes, shorter than an IDX header (truncated)"
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        return f"magic number {found:#010x}, expected {magic} (not an MNIST IDX file)"
    dims = [int.from_bytes(header[4 * k : 4 * k + 4], "big") for k in range(1, ndim + 1)]
    expected = header_size + int(np.prod(dims))
    size = path.stat().st_size
    if size != expected:
        shape = " x ".join(map(str, dims))
        state = "truncated" if size < expected else "trailing bytes"
        return f"{size} bytes but a {shape} IDX file has {expected} ({state})"
    return None


def _diagnose(folder: str, root: Path, train: bool, exc: BaseException) -> str:
    """Which IDX file of the split torchvision failed on, and why (for the error message)."""
    prefix = "train" if train else "t10k"
    for rel, magic, ndim in (
        (f"{folder}/{prefix}-images-idx3-ubyte", IMAGES_MAGIC, 3),
        (f"{folder}/{prefix}-labels-idx1-ubyte", LABELS_MAGIC, 1),
    ):
        try:
            problem = idx_problem(root / rel, magic, ndim)
        except OSError as read_exc:
            problem = one_line(read_exc)
        if problem:
            return f"{rel}: {problem}"
    return one_line(exc)


def _reader(name: str, class_name: str) -> Reader:
    """The reader of torchvision's `class_name` (an MNIST subclass) under `<root>/<class>/raw`."""
    folder = f"{class_name}/raw"

    def read(root: Path, train: bool, verify: bool) -> tuple[Tensor, Tensor]:
        del verify  # no md5 on load: torchvision only checks the downloaded archives
        try:
            dataset = getattr(torchvision_datasets(), class_name)(
                str(root), train=train, download=False
            )
        except Exception as exc:  # AssertionError / ValueError / RuntimeError from the IDX reader
            raise corrupt_error(name, root, _diagnose(folder, root, train, exc)) from exc
        images = dataset.data.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28) uint8
        return images, dataset.targets.to(torch.int64)

    def fetch(root: Path) -> None:
        getattr(torchvision_datasets(), class_name)(str(root), train=True, download=True)

    return Reader(name, folder, _files(folder), read, fetch)


MNIST = _reader("mnist", "MNIST")
FASHION_MNIST = _reader("fashion_mnist", "FashionMNIST")
