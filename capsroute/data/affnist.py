"""The real affNIST files (Tieleman; https://www.cs.toronto.edu/~tijmen/affNIST/): read, fetch.

Layout under the data root (the published zips, unpacked):
  affNIST/transformed/test.mat        the 10,000 MNIST test digits x 32 transformations
  affNIST/transformed/validation.mat  10,000 MNIST training digits x 32 (never trained on)
  affNIST/just_centered/test.mat      the MNIST test digits padded by 6 px (orientation check)

Each file is a MATLAB level-5 file (what `scipy.io.loadmat` reads, as the page recommends) with
one 1x1 struct `affNISTdata`; its field `image` is 1600 x N uint8, one image per column, and
`label_int` is 1 x N. Fields are read by name (the real files hold more, whose order is not
documented). Within a column the pixels are read in row order (`PIXEL_ORDER`), as most public
loaders do; that is UNVERIFIED against a real file. `orientation_check` settles it: the
just_centered test image k must equal MNIST test digit k padded by 6 px.
"""

from __future__ import annotations

import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capsroute.data import canvas
from capsroute.data.source import Reader
from capsroute.errors import DataError

FOLDER = "affNIST"
TEST_FILE = f"{FOLDER}/transformed/test.mat"
VALIDATION_FILE = f"{FOLDER}/transformed/validation.mat"
CENTRED_TEST_FILE = f"{FOLDER}/just_centered/test.mat"
FILES = (TEST_FILE, VALIDATION_FILE)  # what must exist for dataset=affnist
STRUCT = "affNISTdata"
IMAGE_FIELD, LABEL_FIELD = "image", "label_int"
# "row": column k of `image` is image k flattened row by row (C order); "col": column by column.
# UNVERIFIED (see the module docstring): check with `orientation_check` on a real file.
PIXEL_ORDER = "row"
PIXEL_ORDERS = ("row", "col")
BASE_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x"
# file under the root -> its zip on the affNIST page
DOWNLOADS = {
    TEST_FILE: f"{BASE_URL}/transformed/test.mat.zip",
    VALIDATION_FILE: f"{BASE_URL}/transformed/validation.mat.zip",
    CENTRED_TEST_FILE: f"{BASE_URL}/just_centered/test.mat.zip",
}


def to_columns(images: Tensor, order: str = PIXEL_ORDER) -> np.ndarray:
    """(N, 40, 40) uint8 -> the (1600, N) `image` field in `order` (for writing test files)."""
    array = np.asarray(images, dtype=np.uint8)
    if order == "col":
        array = array.transpose(0, 2, 1)
    return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)


def from_columns(field: np.ndarray, order: str = PIXEL_ORDER) -> np.ndarray:
    """The (1600, N) `image` field -> (N, 40, 40) uint8 images read in `order`."""
    images = np.asarray(field).T.reshape(-1, canvas.CANVAS, canvas.CANVAS)
    return images.transpose(0, 2, 1) if order == "col" else images


def read_mat(path: Path, order: str = PIXEL_ORDER) -> tuple[Tensor, Tensor]:
    """One affNIST file as images (N, 1, 40, 40) uint8 and labels (N,) int64.

    `DataError` with one line when the file is not a readable affNIST file.
    """
    import scipy.io

    try:
        struct = scipy.io.loadmat(str(path), simplify_cells=True)[STRUCT]
        field, labels = struct[IMAGE_FIELD], struct[LABEL_FIELD]
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not an affNIST file: no {STRUCT}.{IMAGE_FIELD} / {LABEL_FIELD} ({exc})"
        ) from exc
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError, ...
        detail = " ".join(str(exc).split())[:200]
        raise DataError(f"{path} is unreadable as a MATLAB file: {detail}") from exc
    field = np.asarray(field)
    labels = np.asarray(labels).reshape(-1)
    pixels = canvas.CANVAS * canvas.CANVAS
    if field.ndim != 2 or field.shape[0] != pixels or field.dtype != np.uint8:
        raise DataError(
            f"{path}: {STRUCT}.{IMAGE_FIELD} is {field.dtype} {field.shape}, expected uint8 "
            f"({pixels}, N), one 40x40 image per column"
        )
    if labels.shape[0] != field.shape[1] or labels.dtype.kind not in "iuf":
        raise DataError(f"{path}: {field.shape[1]} images but {LABEL_FIELD} is {labels.shape}")
    images = torch.from_numpy(np.ascontiguousarray(from_columns(field, order))).unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))


def load(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """The test file, or with `train` the validation file (affNIST is never trained on here)."""
    path = root / (VALIDATION_FILE if train else TEST_FILE)
    if not path.is_file():
        raise DataError(
            f"affnist not found under {root}: missing {path.relative_to(root)}; run `capsroute "
            f"data download --dataset affnist --root DIR` where there is a network, or use "
            f"dataset affine_mnist (an approximation generated from MNIST)"
        )
    return read_mat(path)


def orientation_check(centred: Tensor, mnist_test: Tensor) -> str:
    """Which `PIXEL_ORDER` a real just_centered file has: "row", "col" or "neither".

    centred: just_centered test images read with "row" (N, 1, 40, 40); mnist_test: the MNIST
    test digits (N, 1, 28, 28) in the same order (that the order matches is itself unverified).
    """
    padded = canvas.centre(mnist_test)
    if torch.equal(centred, padded):
        return "row"
    if torch.equal(centred.transpose(2, 3), padded):
        return "col"
    return "neither"


def download(root: Path) -> None:
    """Fetch and unpack the affNIST files missing under `root` (`DataError` without network)."""
    for rel, url in DOWNLOADS.items():
        target = root / rel
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        archive = target.parent / (target.name + ".zip.part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            with zipfile.ZipFile(archive) as bundle:
                member = next(n for n in bundle.namelist() if n.endswith(target.name))
                partial = target.with_suffix(".part")
                with bundle.open(member) as source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out)
                partial.replace(target)
        except (OSError, zipfile.BadZipFile, StopIteration) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise DataError(
                f"could not download affnist to {root} (no network?): {url}: {detail}; fetch the "
                f"zips from the affNIST page on a machine with network access and unpack them "
                f"as {', '.join(DOWNLOADS)}"
            ) from exc
        finally:
            archive.unlink(missing_ok=True)


def _read(root: Path, train: bool, download_missing: bool) -> tuple[Tensor, Tensor]:
    """The `Reader` entry: affNIST's validation file as "train" (for `data check`), else test."""
    if download_missing and any(not (root / name).exists() for name in FILES):
        download(root)
    return load(root, train)


AFFNIST = Reader("affnist", FOLDER, FILES, _read, download)
