"""Dataset files: what each dataset is, and reading MNIST / CIFAR-10 from disk into tensors.

Both datasets fit in memory as uint8 (MNIST 55 MB, CIFAR-10 180 MB), so a split is read into one
`(N, C, H, W)` uint8 tensor (`ImageTensors`); `capsroute.data.batches` cuts subsets and batches
from it.
MultiMNIST has no files of its own: it is generated from MNIST's (`DatasetInfo.source`).

Loading goes through torchvision (MNIST always, CIFAR-10 when `dataset.verify` asks for its md5
check) or, for CIFAR-10 copies that fail the md5 check but still parse, through a restricted
unpickler. Every failure a user can fix (files missing, truncated, re-packed, no network for a
download) becomes a `DataError` with one line naming the dataset, the absolute root looked at,
what is wrong and what to do about it; raw torchvision / pickle exceptions never escape.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from capsroute.config import DATASETS, DatasetConfig
from capsroute.data import affnist, canvas, multimnist
from capsroute.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

_MNIST_DIR = "MNIST/raw"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_META = "batches.meta"
_CIFAR_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: image geometry, class count, and the files a root must hold.

    `files` are paths relative to the dataset root in torchvision's layout; a dataset counts as
    present when all of them exist.
    """

    channels: int
    size: int
    num_classes: int
    files: tuple[str, ...]
    targets: int = 1  # labels per image: 2 for MultiMNIST (two digits, both to be found)
    source: str | None = None  # generated from this dataset's files (MultiMNIST from MNIST)


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        channels=1,
        size=28,
        num_classes=10,
        files=tuple(
            f"{_MNIST_DIR}/{split}-{kind}"
            for split in ("train", "t10k")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ),
    ),
    "cifar10": DatasetInfo(
        channels=3,
        size=32,
        num_classes=10,
        files=tuple(f"{_CIFAR_DIR}/{name}" for name in (*_CIFAR_TRAIN, *_CIFAR_TEST, _CIFAR_META)),
    ),
}
DATASET_INFO["multimnist"] = DatasetInfo(
    channels=1,
    size=multimnist.MNIST_SIZE + 2 * 4,  # the paper's 36 px; `input_shape` reads overlay_shift
    num_classes=10,
    files=DATASET_INFO["mnist"].files,
    targets=2,
    source="mnist",
)
# Section 5.2: MNIST on 40x40 (capsroute.data.viewpoint), an affNIST approximation generated
# from MNIST (capsroute.data.affine_mnist), and affNIST's own files (capsroute.data.affnist;
# its "train" split is affNIST's validation file, for `data check` only, never trained on).
for _name in ("mnist40", "affine_mnist"):
    DATASET_INFO[_name] = dataclasses.replace(
        DATASET_INFO["multimnist"], size=canvas.CANVAS, targets=1
    )
DATASET_INFO["affnist"] = DatasetInfo(1, canvas.CANVAS, 10, affnist.FILES)
assert tuple(DATASET_INFO) == DATASETS, "DATASET_INFO must cover config.DATASETS"

_LAYOUT = {"mnist": _MNIST_DIR, "cifar10": _CIFAR_DIR, "affnist": affnist.FOLDER}


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


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: message` squeezed onto one line and truncated, for embedding in a DataError."""
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _resolve_root(root: str | Path) -> Path:
    """The absolute root a user sees in messages (`~` expanded, relative to the working dir)."""
    return Path(root).expanduser().resolve()


def _missing_files(name: str, root: Path) -> list[str]:
    """Relative paths of the dataset's required files that do not exist under `root`."""
    return [rel for rel in DATASET_INFO[name].files if not (root / rel).is_file()]


def _missing_error(name: str, root: Path, missing: list[str]) -> DataError:
    layout = _LAYOUT[name]
    if not (root / layout).is_dir():
        what = f"no {layout}/ folder"
    else:
        shown = ", ".join(missing[:3]) + (
            f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        )
        what = f"missing {shown}"
    return DataError(
        f"{name} not found under {root}: {what}; set CAPSROUTE_DATA or dataset.root to the "
        f"folder that holds {layout}/, or pass dataset.download=true to fetch it"
    )


def _corrupt_error(name: str, root: Path, detail: str) -> DataError:
    return DataError(
        f"{name} files under {root} are unreadable: {detail}; delete the bad files and pass "
        f"dataset.download=true, or point CAPSROUTE_DATA or dataset.root at a good copy"
    )


def _md5_error(root: Path, failing: list[str]) -> DataError:
    shown = ", ".join(failing[:3]) + (f" (+{len(failing) - 3} more)" if len(failing) > 3 else "")
    return DataError(
        f"cifar10 files under {root} fail torchvision's md5 check ({shown}); if they are "
        f"re-packed copies that still parse, pass dataset.verify=false to load them without "
        f"the check, otherwise delete them and pass dataset.download=true"
    )


def _is_download_failure(exc: BaseException) -> bool:
    """Whether an exception from torchvision's download path means the download itself failed.

    Network and file-system errors are `OSError`s (urllib's `URLError` included); torchvision's
    MNIST wraps its per-mirror failures in `RuntimeError("Error downloading ...")` and
    `download_url` raises `RuntimeError("File not found or corrupted.")` for a bad archive.
    """
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        text.startswith(("Error downloading", "File not found or corrupted"))
    )


def _download_error(name: str, root: Path, exc: BaseException) -> DataError:
    if isinstance(exc, PermissionError):
        return DataError(
            f"could not download {name} to {root} (permission denied): {_one_line(exc)}; "
            f"choose a writable folder with --root or dataset.root"
        )
    return DataError(
        f"could not download {name} to {root} (no network?): {_one_line(exc)}; download it on a "
        f"machine with network access with `capsroute data download --dataset {name} --root "
        f"DIR` and point CAPSROUTE_DATA or dataset.root at DIR"
    )


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _datasets() -> Any:
    """`torchvision.datasets`, imported on first use.

    Importing torchvision costs over a second; code that never reads files (batching, shapes)
    and the CIFAR-10 path without the md5 check need not pay it.
    """
    import torchvision.datasets

    return torchvision.datasets


def _torchvision_class(name: str) -> type[VisionDataset]:
    return _datasets().MNIST if name == "mnist" else _datasets().CIFAR10


def download(name: str, root: str | Path) -> None:
    """Fetch `name` into `root` with torchvision (`download=True`), skipping files already there.

    torchvision checks what is present first (MNIST: the raw files exist; CIFAR-10: their md5s
    match, so re-packed copies are replaced). Any network or file-system failure becomes a
    one-line `DataError` telling the user how to get the files from elsewhere.
    """
    if name not in DATASET_INFO:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASET_INFO)}")
    name = DATASET_INFO[name].source or name  # MultiMNIST: its MNIST files
    path = _resolve_root(root)
    if name == "affnist":
        return affnist.download(path)
    try:
        _torchvision_class(name)(str(path), train=True, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        if _is_download_failure(exc):
            raise _download_error(name, path, exc) from exc
        # Downloaded (or already there) but not loadable: report it as loading would.
        _load(name, path, train=True, download=False, verify=name == "cifar10")
        raise _corrupt_error(name, path, _one_line(exc)) from exc


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_mnist(root: Path, train: bool, download_missing: bool) -> tuple[Tensor, Tensor]:
    """MNIST through `torchvision.datasets.MNIST`, reading its `.data` / `.targets` tensors."""
    if download_missing and _missing_files("mnist", root):
        download("mnist", root)
    missing = _missing_files("mnist", root)
    if missing:
        raise _missing_error("mnist", root, missing)
    try:
        dataset = _datasets().MNIST(str(root), train=train, download=False)
    except Exception as exc:  # AssertionError / ValueError / RuntimeError from the IDX reader
        raise _corrupt_error("mnist", root, _diagnose_mnist(root, train, exc)) from exc
    images = dataset.data.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28) uint8
    return images, dataset.targets.to(torch.int64)


def _idx_problem(path: Path, magic: int, ndim: int) -> str | None:
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


def _diagnose_mnist(root: Path, train: bool, exc: BaseException) -> str:
    """Which IDX file of the split torchvision failed on, and why (for the error message)."""
    prefix = "train" if train else "t10k"
    for rel, magic, ndim in (
        (f"{_MNIST_DIR}/{prefix}-images-idx3-ubyte", 2051, 3),
        (f"{_MNIST_DIR}/{prefix}-labels-idx1-ubyte", 2049, 1),
    ):
        try:
            problem = _idx_problem(root / rel, magic, ndim)
        except OSError as read_exc:
            problem = _one_line(read_exc)
        if problem:
            return f"{rel}: {problem}"
    return _one_line(exc)


def _cifar_md5_failures(root: Path) -> list[str]:
    """The CIFAR-10 files under `root` that are missing or fail torchvision's md5 check."""
    from torchvision.datasets.utils import check_integrity

    cls = _datasets().CIFAR10
    expected = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [
        f"{_CIFAR_DIR}/{filename}"
        for filename, md5 in expected
        if not check_integrity(str(root / _CIFAR_DIR / filename), md5)
    ]


def _load_cifar_verified(root: Path, train: bool, download_bad: bool) -> tuple[Tensor, Tensor]:
    """CIFAR-10 through `torchvision.datasets.CIFAR10`, whose md5 check rejects re-packed copies."""
    if download_bad and _cifar_md5_failures(root):
        had_files = not _missing_files("cifar10", root)
        try:
            download("cifar10", root)
        except DataError as err:
            if not had_files:
                raise
            cause = _one_line(err.__cause__) if err.__cause__ is not None else str(err)
            raise DataError(
                f"cifar10 files under {root} fail torchvision's md5 check and re-downloading them "
                f"failed (no network?: {cause}); if they are re-packed copies that still parse, "
                f"pass dataset.verify=false to load them without the check"
            ) from err
    missing = _missing_files("cifar10", root)
    if missing:
        raise _missing_error("cifar10", root, missing)
    try:
        dataset = _datasets().CIFAR10(str(root), train=train, download=False)
    except Exception as exc:  # "Dataset not found or corrupted", pickle errors, ...
        failing = _cifar_md5_failures(root)
        if failing:
            raise _md5_error(root, failing) from exc
        raise _corrupt_error("cifar10", root, _one_line(exc)) from exc
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    # (N, 32, 32, 3) -> (N, 3, 32, 32) uint8
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, so a hostile "CIFAR batch" cannot run code.

    CIFAR batches are dicts of bytes, lists of ints and one uint8 array; the globals below are
    all that numpy needs to rebuild such an array under pickle protocols 2 to 5 (old numpy
    pickles name `numpy.core`, numpy 2 names `numpy._core`). Anything else is refused.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # no deprecation warning
        return getattr(importlib.import_module(module), name)


def _entry(batch: dict[Any, Any], key: str) -> Any:
    """`batch[key]`, accepting the bytes keys of the original pickles and str keys of re-packs."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def _read_cifar_batch(root: Path, filename: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle as (N, 3072) uint8 pixels and (N,) int64 labels, without md5 check."""
    rel = f"{_CIFAR_DIR}/{filename}"
    try:
        with open(root / rel, "rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, OSError, ...
        raise _corrupt_error("cifar10", root, f"{rel}: cannot unpickle ({_one_line(exc)})") from exc
    try:
        data = _entry(batch, "data")
        labels = np.asarray(_entry(batch, "labels"))
    except (KeyError, TypeError) as exc:
        raise _corrupt_error(
            "cifar10", root, f"{rel}: not a CIFAR batch (need a dict with 'data' and 'labels')"
        ) from exc
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_PIXELS
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt_error(
            "cifar10", root, f"{rel}: 'data' must be a uint8 array (N, {_CIFAR_PIXELS}), got {got}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise _corrupt_error(
            "cifar10",
            root,
            f"{rel}: {data.shape[0]} images but 'labels' is {labels.dtype} {labels.shape}",
        )
    return data, labels.astype(np.int64)


def _load_cifar_unverified(
    root: Path, train: bool, download_missing: bool
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from its pickles without the md5 check: files must exist and parse."""
    if download_missing and _missing_files("cifar10", root):
        download("cifar10", root)
    missing = _missing_files("cifar10", root)
    if missing:
        raise _missing_error("cifar10", root, missing)
    parts = [_read_cifar_batch(root, name) for name in (_CIFAR_TRAIN if train else _CIFAR_TEST)]
    data = np.concatenate([pixels for pixels, _ in parts])  # (N, 3072) uint8, R then G then B
    labels = np.concatenate([labels for _, labels in parts])  # (N,)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32))  # (N, 3, 32, 32) uint8
    return images, torch.from_numpy(labels)


def _load(name: str, root: Path, train: bool, download: bool, verify: bool) -> ImageTensors:
    """One full split of `name` under the absolute `root`, validated, on the CPU."""
    if name == "mnist":
        images, labels = _load_mnist(root, train, download)
    elif name == "affnist":
        if download and _missing_files(name, root):
            affnist.download(root)
        images, labels = affnist.load(root, train)
    elif verify:
        images, labels = _load_cifar_verified(root, train, download)
    else:
        images, labels = _load_cifar_unverified(root, train, download)
    info = DATASET_INFO[name]
    split = "train" if train else "test"
    expected = (info.channels, info.size, info.size)
    if tuple(images.shape[1:]) != expected or images.dtype != torch.uint8:
        raise _corrupt_error(
            name,
            root,
            f"{split} images are {tuple(images.shape[1:])} {images.dtype}, "
            f"expected {expected} uint8",
        )
    if labels.shape[0] != images.shape[0]:
        raise _corrupt_error(
            name, root, f"{images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise _corrupt_error(
            name,
            root,
            f"{split} labels outside 0..{info.num_classes - 1}: "
            f"min {int(labels.min())}, max {int(labels.max())}",
        )
    if images.shape[0] == 0:
        raise _corrupt_error(name, root, f"the {split} split holds no images")
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

    `verify` applies torchvision's md5 check to CIFAR-10 (MNIST's raw files have none).
    Both splits are loaded in full, so a truncated or garbled file is caught here.
    """
    path = _resolve_root(root)
    statuses = []
    for name, info in DATASET_INFO.items():
        if info.source is not None:
            continue  # generated from another dataset's files, which are checked themselves
        missing = _missing_files(name, path)
        if missing:
            error = _missing_error(name, path, missing)
            statuses.append(DatasetStatus(name, False, False, None, None, str(error)))
            continue
        try:
            train = _load(name, path, train=True, download=False, verify=verify)
            test = _load(name, path, train=False, download=False, verify=verify)
        except DataError as error:
            statuses.append(DatasetStatus(name, True, False, None, None, str(error)))
            continue
        note = " (md5 not checked)" if name == "cifar10" and not verify else ""
        message = f"ok: {len(train)} train and {len(test)} test images{note}"
        statuses.append(DatasetStatus(name, True, True, len(train), len(test), message))
    return statuses
