"""smallNORB (Huang & LeCun 2005): the `-dat`, `-cat` and `-info` binary matrices of each split.

The dataset page (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/) documents the format: a
little-endian header of int32s `magic, ndim, dim[max(ndim, 3)]` (unused dims are 1), then the
data in C order. Magic 0x1E3D4C55 is a byte (uint8) matrix, 0x1E3D4C54 an int32 one. Per split:
`-dat` is 24,300 x 2 x 96 x 96 uint8 (the two stereo cameras), `-cat` 24,300 int32 categories
0..4 (animal, human, plane, truck, car), `-info` 24,300 x 4 int32 (instance, elevation,
azimuth, lighting; checked for shape, not used). The files are published gzipped; capsroute
reads them uncompressed from `<root>/smallnorb/` (`capsroute data download` unpacks them).

As in the paper (Section 7), each image is resized to 48 x 48 when read; the random 32 x 32
training crops and central test crop are `dataset.crop=32`. The two stereo views enter as two
channels, as the authors' code does. The resize halves each side exactly, so it averages each
2 x 2 block (what bilinear interpolation with half-pixel centres gives at a factor of 2).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import Tensor

from capsroute.data.source import Reader, corrupt_error

FOLDER = "smallnorb"
URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
PREFIX = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
KINDS = ("dat", "cat", "info")
BYTE_MAGIC = 0x1E3D4C55  # uint8 matrix
INT_MAGIC = 0x1E3D4C54  # int32 matrix
DTYPES = {BYTE_MAGIC: np.dtype("u1"), INT_MAGIC: np.dtype("<i4")}
RAW_SIZE = 96  # side of the published images
SIZE = 48  # side after the paper's resize
CHANNELS = 2  # the two stereo cameras
INFO_FIELDS = 4
_RESIZE_CHUNK = 2048  # images resized at once (bounds the float32 working memory to ~150 MB)


def file_name(split: str, kind: str) -> str:
    """The uncompressed file of `split` ("train"/"test") and `kind` ("dat"/"cat"/"info")."""
    return f"{PREFIX[split]}-{kind}.mat"


def read_matrix(path: Path, magic: int) -> np.ndarray:
    """One binary matrix with the expected element type, or `ValueError` naming the problem.

    The header's element count must match the file's length exactly, so a truncated file or
    one with trailing bytes is refused before any data is read.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"only {size} bytes, shorter than a NORB header (truncated)")
        found, ndim = np.frombuffer(head, dtype="<i4")
        if found != magic:
            raise ValueError(
                f"magic number {int(found) & 0xFFFFFFFF:#010x}, expected {magic:#010x} "
                f"(not a smallNORB {DTYPES[magic].name} matrix)"
            )
        stored = max(int(ndim), 3)
        if not 1 <= ndim <= 8:
            raise ValueError(f"header says {int(ndim)} dimensions (not a smallNORB matrix)")
        raw_dims = handle.read(4 * stored)
        if len(raw_dims) < 4 * stored:
            raise ValueError(f"only {size} bytes, shorter than its header (truncated)")
        dims = [int(d) for d in np.frombuffer(raw_dims, dtype="<i4")[:ndim]]
        if min(dims) < 0:
            raise ValueError(f"negative dimension in header {dims}")
        offset = 8 + 4 * stored
        expected = offset + int(np.prod(dims)) * DTYPES[magic].itemsize
        if size != expected:
            shape = " x ".join(map(str, dims))
            state = "truncated" if size < expected else "trailing bytes"
            raise ValueError(f"{size} bytes but a {shape} matrix has {expected} ({state})")
        data = np.fromfile(handle, dtype=DTYPES[magic])
    return data.reshape(dims).astype(DTYPES[magic].newbyteorder("="), copy=False)


def resize_half(images: Tensor) -> Tensor:
    """(N, C, 96, 96) uint8 -> (N, C, 48, 48) uint8: each 2 x 2 block averaged and rounded."""
    out = [
        torch.round(F.avg_pool2d(chunk.float(), kernel_size=RAW_SIZE // SIZE)).to(torch.uint8)
        for chunk in images.split(_RESIZE_CHUNK)
    ]
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], SIZE, SIZE))


def _read(root: Path, train: bool, verify: bool) -> tuple[Tensor, Tensor]:
    """One split as (N, 2, 48, 48) uint8 stereo pairs and (N,) int64 categories 0..4."""
    del verify  # smallNORB publishes no checksums
    split = "train" if train else "test"
    arrays = {}
    for kind, magic in zip(KINDS, (BYTE_MAGIC, INT_MAGIC, INT_MAGIC), strict=True):
        rel = f"{FOLDER}/{file_name(split, kind)}"
        try:
            arrays[kind] = read_matrix(root / rel, magic)
        except (ValueError, OSError) as exc:
            raise corrupt_error("smallnorb", root, f"{rel}: {exc}") from exc
    dat, cat, info = arrays["dat"], arrays["cat"].reshape(-1), arrays["info"]
    expected = {
        "dat": (
            dat.ndim == 4 and dat.shape[1:] == (CHANNELS, RAW_SIZE, RAW_SIZE),
            "N x 2 x 96 x 96",
        ),
        "info": (info.ndim == 2 and info.shape[1] == INFO_FIELDS, "N x 4"),
    }
    for kind, (ok, shape) in expected.items():
        if not ok:
            got = " x ".join(map(str, arrays[kind].shape))
            raise corrupt_error(
                "smallnorb", root, f"{FOLDER}/{file_name(split, kind)}: {got}, expected {shape}"
            )
    if not dat.shape[0] == cat.shape[0] == info.shape[0]:
        raise corrupt_error(
            "smallnorb",
            root,
            f"{split} files disagree: {dat.shape[0]} images, {cat.shape[0]} categories, "
            f"{info.shape[0]} info rows",
        )
    images = resize_half(torch.from_numpy(np.ascontiguousarray(dat)))  # (N, 2, 48, 48)
    return images, torch.from_numpy(cat.astype(np.int64))


def _fetch(root: Path) -> None:
    """Download the six gzipped matrices (no published md5) and unpack them in place."""
    from torchvision.datasets.utils import download_url

    folder = root / FOLDER
    for split in PREFIX:
        for kind in KINDS:
            target = folder / file_name(split, kind)
            if target.is_file():
                continue
            archive = folder / f"{target.name}.gz"
            download_url(URL + archive.name, str(folder), archive.name)
            partial = target.with_suffix(".part")
            with gzip.open(archive, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
            archive.unlink()


SMALLNORB = Reader(
    "smallnorb",
    FOLDER,
    tuple(f"{FOLDER}/{file_name(split, kind)}" for split in PREFIX for kind in KINDS),
    _read,
    _fetch,
)
