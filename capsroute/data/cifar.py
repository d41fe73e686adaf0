"""CIFAR-10: the python-pickle batches of `cifar-10-batches-py/`.

With `dataset.verify` (the default) they load through `torchvision.datasets.CIFAR10`, whose md5
check rejects re-packed copies; without it, through a restricted unpickler that rebuilds numpy
arrays only, so a hostile "batch" cannot run code, and that checks each batch's shape.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from capsroute.data.source import (
    Reader,
    corrupt_error,
    md5_error,
    one_line,
    torchvision_datasets,
)

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"
PIXELS = 3 * 32 * 32


def _md5_failures(root: Path) -> list[str]:
    """The CIFAR-10 files under `root` that are missing or fail torchvision's md5 check."""
    from torchvision.datasets.utils import check_integrity

    cls = torchvision_datasets().CIFAR10
    expected = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [
        f"{FOLDER}/{filename}"
        for filename, md5 in expected
        if not check_integrity(str(root / FOLDER / filename), md5)
    ]


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


def _read_batch(root: Path, filename: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle as (N, 3072) uint8 pixels and (N,) int64 labels, without md5 check."""
    rel = f"{FOLDER}/{filename}"
    try:
        with open(root / rel, "rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, OSError, ...
        raise corrupt_error("cifar10", root, f"{rel}: cannot unpickle ({one_line(exc)})") from exc
    try:
        data = _entry(batch, "data")
        labels = np.asarray(_entry(batch, "labels"))
    except (KeyError, TypeError) as exc:
        raise corrupt_error(
            "cifar10", root, f"{rel}: not a CIFAR batch (need a dict with 'data' and 'labels')"
        ) from exc
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == PIXELS
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise corrupt_error(
            "cifar10", root, f"{rel}: 'data' must be a uint8 array (N, {PIXELS}), got {got}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise corrupt_error(
            "cifar10",
            root,
            f"{rel}: {data.shape[0]} images but 'labels' is {labels.dtype} {labels.shape}",
        )
    return data, labels.astype(np.int64)


def _read_verified(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """CIFAR-10 through `torchvision.datasets.CIFAR10`, whose md5 check rejects re-packed copies."""
    try:
        dataset = torchvision_datasets().CIFAR10(str(root), train=train, download=False)
    except Exception as exc:  # "Dataset not found or corrupted", pickle errors, ...
        failing = _md5_failures(root)
        if failing:
            raise md5_error("cifar10", root, failing) from exc
        raise corrupt_error("cifar10", root, one_line(exc)) from exc
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    # (N, 32, 32, 3) -> (N, 3, 32, 32) uint8
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _read(root: Path, train: bool, verify: bool) -> tuple[Tensor, Tensor]:
    """One split: through torchvision with the md5 check, or from the pickles without it."""
    if verify:
        return _read_verified(root, train)
    parts = [_read_batch(root, name) for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    data = np.concatenate([pixels for pixels, _ in parts])  # (N, 3072) uint8, R then G then B
    labels = np.concatenate([labels for _, labels in parts])  # (N,)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32))  # (N, 3, 32, 32) uint8
    return images, torch.from_numpy(labels)


def _fetch(root: Path) -> None:
    torchvision_datasets().CIFAR10(str(root), train=True, download=True)


CIFAR10 = Reader(
    "cifar10",
    FOLDER,
    tuple(f"{FOLDER}/{name}" for name in (*TRAIN_BATCHES, *TEST_BATCHES, META)),
    _read,
    _fetch,
    md5_failures=_md5_failures,
)
