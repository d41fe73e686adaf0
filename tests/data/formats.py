"""Writers of tiny Fashion-MNIST, SVHN and smallNORB files in their exact published layouts.

Shared by the reader tests and the end-to-end training tests; each returns the arrays written
so a test can compare what the real readers give back.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import scipy.io

from capsroute.data import smallnorb, svhn


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: big-endian magic 0x0803 (uint8, 3 dims) or 0x0801 (1 dim), big-endian dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """`<root>/FashionMNIST/raw/` with all four IDX files; {split: (images (N,28,28), labels)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = (images, labels)
    return arrays


def make_svhn(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """`<root>/svhn/{train,test}_32x32.mat` as the Stanford files: X 32x32x3xN uint8, y Nx1
    uint8 with 10 for the digit 0. Returns {split: (images (N, 3, 32, 32), labels 0..9)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        labels = np.arange(count) % 10
        stored = np.where(labels == 0, svhn.ZERO_LABEL, labels).astype(np.uint8).reshape(-1, 1)
        path = root / svhn.FOLDER / svhn.FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": stored})
        arrays[split] = (images, labels)
    return arrays


def norb_matrix(array: np.ndarray) -> bytes:
    """The NORB binary matrix: little-endian int32 magic, ndim, max(ndim, 3) dims, C-order data."""
    magic = smallnorb.BYTE_MAGIC if array.dtype == np.uint8 else smallnorb.INT_MAGIC
    dims = [*array.shape, *[1] * max(0, 3 - array.ndim)]
    header = struct.pack("<ii", magic, array.ndim) + struct.pack(f"<{len(dims)}i", *dims)
    data = array if array.dtype == np.uint8 else array.astype("<i4")
    return header + np.ascontiguousarray(data).tobytes()


def make_smallnorb(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """The six uncompressed matrices under `<root>/smallnorb/`; {split: (dat (N,2,96,96), cat)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n_train), ("test", n_test)):
        dat = rng.integers(0, 256, (count, 2, 96, 96), dtype=np.uint8)
        cat = (np.arange(count) % 5).astype(np.int32)
        info = np.stack(
            [rng.integers(0, 10, count), rng.integers(0, 9, count),
             2 * rng.integers(0, 18, count), rng.integers(0, 6, count)],
            axis=1,
        ).astype(np.int32)  # fmt: skip
        folder = root / smallnorb.FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for kind, array in (("dat", dat), ("cat", cat), ("info", info)):
            (folder / smallnorb.file_name(split, kind)).write_bytes(norb_matrix(array))
        arrays[split] = (dat, cat)
    return arrays
