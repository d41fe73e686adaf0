"""Tests for capsroute.data: on-disk formats, one-line errors, subsets, batches, augmentation.

Synthetic datasets are written in the exact formats torchvision reads (IDX files for MNIST,
Python-2-style pickles for CIFAR-10) into a tmp dir, so every loader path runs without the real
data. Tests on the real data read `CAPSROUTE_DATA` (default `../shared/data` from the repo root)
and skip when it is absent.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional

from capsroute import data
from capsroute.config import DatasetConfig
from capsroute.data import (
    DATASET_INFO,
    Augmentation,
    Batch,
    ImageTensors,
    augment,
    balanced_subset,
    check,
    eval_batches,
    input_shape,
    load_split,
    make_splits,
    num_batches,
    sample_augmentation,
    train_batches,
)
from capsroute.errors import ConfigError, DataError

REAL_ROOT = Path(
    os.environ.get("CAPSROUTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------
# Writers for torchvision's on-disk formats
# --------------------------------------------------------------------------------------------


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 as distributed by LeCun: big-endian magic 2051, count, rows, cols, uint8 pixels."""
    count, rows, cols = images.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">IIII", 2051, count, rows, cols) + images.tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1: big-endian magic 2049, count, uint8 labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, Any]:
    """Write a tiny MNIST under `root/MNIST/raw`; returns {split: (images (N,28,28), labels)}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(count) % 10)
        write_idx_images(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx_labels(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = (images, labels)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Writes `bytes` as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the CIFAR-10 pickles do.

    Loaded with `encoding="bytes"` they come back as bytes, with torchvision's
    `encoding="latin1"` as str: the two readings the original files get.
    """

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_pickle(path: Path, obj: Any, style: str) -> None:
    """Pickle `obj` as the original CIFAR files ("py2") or as a Python 3 re-pack would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        if style == "py2":
            Py2Pickler(handle, protocol=2).dump(obj)
        else:
            pickle.dump(obj, handle, protocol=5 if style == "py3-str-keys" else 4)


def make_cifar(
    root: Path, per_batch: int = 6, n_test: int = 7, seed: int = 0, style: str = "py2"
) -> dict[str, Any]:
    """Write a tiny CIFAR-10 under `root/cifar-10-batches-py`.

    Returns {"train": (data (N, 3072), labels), "test": (...)} with N = 5 * per_batch.
    `style`: "py2" (bytes keys, the original format), "py3-bytes-keys", "py3-str-keys".
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"

    def key(name: str) -> str | bytes:
        return name if style == "py3-str-keys" else name.encode()

    def batch(count: int, label: str) -> tuple[np.ndarray, list[int], dict[Any, Any]]:
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, count)]
        entry = {key("batch_label"): label.encode(), key("labels"): labels, key("data"): pixels}
        return pixels, labels, entry

    train_pixels: list[np.ndarray] = []
    train_labels: list[int] = []
    for i in range(1, 6):
        pixels, labels, entry = batch(per_batch, f"training batch {i} of 5")
        dump_pickle(folder / f"data_batch_{i}", entry, style)
        train_pixels.append(pixels)
        train_labels += labels
    test_pixels, test_labels, entry = batch(n_test, "testing batch 1 of 1")
    dump_pickle(folder / "test_batch", entry, style)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer")]
    names += [n.encode() for n in ("dog", "frog", "horse", "ship", "truck")]
    meta = {key("num_cases_per_batch"): per_batch, key("label_names"): names, key("num_vis"): 3072}
    dump_pickle(folder / "batches.meta", meta, style)
    return {
        "train": (np.concatenate(train_pixels), np.array(train_labels)),
        "test": (test_pixels, np.array(test_labels)),
    }


def cfg_for(name: str, root: Path | str, **overrides: Any) -> DatasetConfig:
    """A DatasetConfig pointing at `root` (tests never rely on the env-var default)."""
    return DatasetConfig(name=name, root=str(root), **overrides)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[DataError], *needles: str) -> str:
    """The DataError message is a single line containing every `needle`."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def real_root(name: str) -> Path:
    """The shared real-data root, or skip when it lacks dataset `name`."""
    missing = [rel for rel in DATASET_INFO[name].files if not (REAL_ROOT / rel).is_file()]
    if missing:
        pytest.skip(f"real {name} not under {REAL_ROOT} (set CAPSROUTE_DATA); missing {missing[0]}")
    return REAL_ROOT


# --------------------------------------------------------------------------------------------
# Loading synthetic files
# --------------------------------------------------------------------------------------------


def test_mnist_idx_files_round_trip(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path, n_train=30, n_test=12)
    for train, split in ((True, "train"), (False, "t10k")):
        images, labels = arrays[split]
        loaded = load_split(cfg_for("mnist", tmp_path), train=train)
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert loaded.images.shape == (len(images), 1, 28, 28)
        assert loaded.images.device.type == "cpu"
        assert torch.equal(loaded.images[:, 0], torch.from_numpy(images))
        assert torch.equal(loaded.labels, torch.from_numpy(labels).long())


@pytest.mark.parametrize("style", ["py2", "py3-bytes-keys", "py3-str-keys"])
def test_cifar_pickles_round_trip_without_md5(tmp_path: Path, style: str) -> None:
    arrays = make_cifar(tmp_path, style=style)
    for train, split in ((True, "train"), (False, "test")):
        pixels, labels = arrays[split]
        loaded = load_split(cfg_for("cifar10", tmp_path, verify=False), train=train)
        assert loaded.images.shape == (len(pixels), 3, 32, 32)
        assert loaded.images.dtype == torch.uint8
        # each row is 1024 red, then 1024 green, then 1024 blue values, row-major
        assert torch.equal(
            loaded.images[:, 1], torch.from_numpy(pixels[:, 1024:2048]).view(-1, 32, 32)
        )
        assert torch.equal(loaded.images.flatten(1), torch.from_numpy(pixels))
        assert torch.equal(loaded.labels, torch.from_numpy(labels).long())


def test_cifar_verified_load_matches_unverified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With md5s that match (patched in), the torchvision path gives the same tensors."""
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(
        cls, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5("batches.meta")})
    for train in (True, False):
        verified = load_split(cfg_for("cifar10", tmp_path, verify=True), train=train)
        unverified = load_split(cfg_for("cifar10", tmp_path, verify=False), train=train)
        assert torch.equal(verified.images, unverified.images)
        assert torch.equal(verified.labels, unverified.labels)


def test_repacked_cifar_with_verify_suggests_verify_false(tmp_path: Path) -> None:
    make_cifar(tmp_path)  # not the published bytes, so torchvision's md5 check fails
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", tmp_path, verify=True), train=True)
    assert_one_line_error(
        excinfo, "cifar10", str(tmp_path.resolve()), "md5", "dataset.verify=false"
    )
    assert len(load_split(cfg_for("cifar10", tmp_path, verify=False), train=True)) == 30


# --------------------------------------------------------------------------------------------
# Missing and corrupt files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
@pytest.mark.parametrize("verify", [True, False])
def test_missing_dataset_is_one_line_naming_root_and_fix(
    tmp_path: Path, name: str, verify: bool
) -> None:
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for(name, tmp_path / "nowhere", verify=verify), train=True)
    assert_one_line_error(
        excinfo,
        name,
        str((tmp_path / "nowhere").resolve()),
        "CAPSROUTE_DATA",
        "dataset.root",
        "dataset.download=true",
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", tmp_path), train=False)
    assert_one_line_error(excinfo, "MNIST/raw/t10k-labels-idx1-ubyte", str(tmp_path.resolve()))


def test_relative_root_is_reported_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", "data"), train=True)
    assert_one_line_error(excinfo, f"under {tmp_path.resolve() / 'data'}:")


def test_truncated_idx_file_is_a_data_error(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", tmp_path), train=True)
    assert_one_line_error(excinfo, "train-images-idx3-ubyte", str(tmp_path.resolve()))


@pytest.mark.parametrize(
    ("content", "needle"),
    [("html", "shorter than an IDX header"), ("labels-in-images-slot", "not an MNIST IDX file")],
)
def test_garbage_idx_file_is_a_data_error(tmp_path: Path, content: str, needle: str) -> None:
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    if content == "html":
        (raw / "t10k-images-idx3-ubyte").write_bytes(b"<html>")
    else:
        (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", tmp_path), train=False)
    assert_one_line_error(excinfo, "t10k-images-idx3-ubyte", needle)


def test_label_count_mismatch_is_a_data_error(tmp_path: Path) -> None:
    images, labels = make_mnist(tmp_path)["train"]
    write_idx_labels(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", tmp_path), train=True)
    assert_one_line_error(excinfo, f"{len(images)} train images but {len(images) - 1} labels")


def test_out_of_range_labels_are_a_data_error(tmp_path: Path) -> None:
    _, labels = make_mnist(tmp_path)["train"]
    labels = labels.copy()
    labels[3] = 10
    write_idx_labels(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("mnist", tmp_path), train=True)
    assert_one_line_error(excinfo, "labels outside 0..9")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_broken_cifar_pickle_is_a_data_error(tmp_path: Path, damage: str) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    content = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else content[: len(content) // 2])
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", tmp_path, verify=False), train=True)
    assert_one_line_error(excinfo, "cifar-10-batches-py/data_batch_3", str(tmp_path.resolve()))
    # the test split does not read data_batch_3 and still loads
    assert len(load_split(cfg_for("cifar10", tmp_path, verify=False), train=False)) == 7


def test_cifar_pickle_with_wrong_shape_is_a_data_error(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    bad = {b"batch_label": b"x", b"labels": [1, 2], b"data": np.zeros((2, 100), np.uint8)}
    dump_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", bad, "py2")
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", tmp_path, verify=False), train=False)
    assert_one_line_error(excinfo, "test_batch", "(N, 3072)")


class _Payload:
    """Unpickles into a call of `open(marker, "w")`: proof of code execution if it ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    marker = tmp_path / "executed"
    dump_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": _Payload(marker)}, "py3")
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", tmp_path, verify=False), train=False)
    assert_one_line_error(excinfo, "test_batch", "refusing to load")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_without_network_is_one_actionable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)
    root = str(tmp_path.resolve())
    with pytest.raises(DataError) as excinfo:
        data.download(name, tmp_path)
    assert_one_line_error(
        excinfo,
        f"could not download {name} to {root}",
        "no network?",
        f"capsroute data download --dataset {name}",
        "CAPSROUTE_DATA",
    )
    for verify in (True, False):
        with pytest.raises(DataError) as excinfo:
            load_split(cfg_for(name, tmp_path, download=True, verify=verify), train=True)
        assert_one_line_error(excinfo, f"could not download {name} to {root}")


def test_multiline_torchvision_download_error_becomes_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a, got:\nboom\n")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    with pytest.raises(DataError) as excinfo:
        data.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "Error downloading train-images-idx3-ubyte.gz: Tried a")


def test_download_skips_files_already_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mnist(tmp_path)
    make_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)
    data.download("mnist", tmp_path)  # torchvision sees the raw files and fetches nothing
    assert len(load_split(cfg_for("mnist", tmp_path, download=True), train=True)) == 40
    # verify=false: the re-packed copy exists, so no download is attempted
    assert len(load_split(cfg_for("cifar10", tmp_path, download=True, verify=False), True)) == 30


def test_repacked_cifar_with_failed_redownload_still_suggests_verify_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", tmp_path, download=True, verify=True), train=True)
    assert_one_line_error(excinfo, "md5", "no network?", "dataset.verify=false")


def test_download_into_unwritable_root_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "MNIST"))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", denied)
    with pytest.raises(DataError) as excinfo:
        data.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "permission denied", "writable")


def test_download_over_corrupt_files_reports_the_corruption(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])  # present, so torchvision does not re-fetch it
    with pytest.raises(DataError) as excinfo:
        data.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "train-labels-idx1-ubyte", "truncated")


def test_download_unknown_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        data.download("svhn", tmp_path)


# --------------------------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------------------------


def test_check_reports_presence_and_loadability(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=30, n_test=10)
    mnist, cifar = check(tmp_path, verify=True)
    assert (mnist.name, mnist.present, mnist.loadable) == ("mnist", True, True)
    assert (mnist.train_count, mnist.test_count) == (30, 10)
    assert (cifar.name, cifar.present, cifar.loadable, cifar.train_count) == (
        "cifar10",
        False,
        False,
        None,
    )
    assert str(tmp_path.resolve()) in cifar.message

    make_cifar(tmp_path)
    cifar = check(tmp_path, verify=True)[1]
    assert cifar.present and not cifar.loadable and "dataset.verify=false" in cifar.message
    cifar = check(tmp_path, verify=False)[1]
    assert cifar.loadable and (cifar.train_count, cifar.test_count) == (30, 7)


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


def test_real_mnist_loads_in_full() -> None:
    root = real_root("mnist")
    train = load_split(cfg_for("mnist", root), train=True)
    test = load_split(cfg_for("mnist", root), train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the published order
    assert torch.equal(torch.unique(test.labels), torch.arange(10))


def test_real_cifar_loads_without_md5_and_is_rejected_with_it() -> None:
    root = real_root("cifar10")
    train = load_split(cfg_for("cifar10", root, verify=False), train=True)
    test = load_split(cfg_for("cifar10", root, verify=False), train=False)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (1000, 3, 32, 32)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 5000))
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("cifar10", root, verify=True), train=False)
    assert_one_line_error(excinfo, "dataset.verify=false")


# --------------------------------------------------------------------------------------------
# balanced_subset
# --------------------------------------------------------------------------------------------


def _skewed_labels(n: int = 1000) -> torch.Tensor:
    """(n,) labels over 10 classes with very different frequencies."""
    probs = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=torch.float64)
    return torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(0))


def test_balanced_subset_is_seeded_sorted_unique_and_balanced() -> None:
    labels = _skewed_labels()
    index = balanced_subset(labels, 95, seed=3)
    assert index.dtype == torch.int64 and len(index) == 95
    assert torch.equal(index, balanced_subset(labels, 95, seed=3))
    assert not torch.equal(index, balanced_subset(labels, 95, seed=4))
    assert torch.equal(index, torch.sort(index).values)
    assert len(torch.unique(index)) == 95
    counts = torch.bincount(labels[index], minlength=10)
    assert counts.max() - counts.min() <= 1


def test_balanced_subset_spreads_the_remainder_by_seed() -> None:
    labels = torch.arange(500) % 10
    favoured = set()
    for seed in range(6):
        counts = torch.bincount(labels[balanced_subset(labels, 23, seed)], minlength=10)
        assert sorted(counts.tolist()) == [2] * 7 + [3] * 3
        favoured.add(tuple(torch.nonzero(counts == 3).flatten().tolist()))
    assert len(favoured) > 1  # not always the same three classes


def test_balanced_subset_fills_from_other_classes_when_one_is_short() -> None:
    labels = torch.cat([torch.zeros(3, dtype=torch.int64), torch.arange(1, 10).repeat(100)])
    index = balanced_subset(labels, 50, seed=0)
    counts = torch.bincount(labels[index], minlength=10)
    assert len(index) == 50 and counts[0] == 3  # all of the short class
    assert counts[1:].max() - counts[1:].min() <= 1 and counts[1:].sum() == 47


def test_balanced_subset_of_everything_is_arange() -> None:
    labels = _skewed_labels(50)
    assert torch.equal(balanced_subset(labels, 50, 0), torch.arange(50))
    assert torch.equal(balanced_subset(labels, 80, 0), torch.arange(50))


# --------------------------------------------------------------------------------------------
# make_splits
# --------------------------------------------------------------------------------------------


def _rows(split: ImageTensors) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.images.cpu()}


def test_make_splits_sizes_balance_and_nesting(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=200, n_test=100)
    cfg = cfg_for("mnist", tmp_path, train_size=50, test_size=30, train_eval_size=20)
    splits = make_splits(cfg, seed=7, device=CPU)
    assert (len(splits.train), len(splits.test), len(splits.train_eval)) == (50, 30, 20)
    for split in (splits.train, splits.test, splits.train_eval):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.max() - counts.min() <= 1
    assert _rows(splits.train_eval) <= _rows(splits.train)
    assert _rows(splits.train) <= _rows(load_split(cfg, train=True))
    assert _rows(splits.test) <= _rows(load_split(cfg, train=False))

    again = make_splits(cfg, seed=7, device=CPU)
    assert torch.equal(again.train.images, splits.train.images)
    assert torch.equal(again.train_eval.labels, splits.train_eval.labels)
    assert not torch.equal(make_splits(cfg, seed=8, device=CPU).train.images, splits.train.images)


def test_make_splits_full_sets_and_capped_train_eval(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=60, n_test=20)
    splits = make_splits(cfg_for("mnist", tmp_path, train_eval_size=10000), 0, CPU)
    assert (len(splits.train), len(splits.test), len(splits.train_eval)) == (60, 20, 60)
    assert torch.equal(splits.train_eval.images, splits.train.images)


@pytest.mark.parametrize("on_device", [True, False])
def test_make_splits_placement(tmp_path: Path, on_device: bool) -> None:
    make_mnist(tmp_path)
    splits = make_splits(cfg_for("mnist", tmp_path, on_device=on_device), 0, torch.device("meta"))
    expected = "meta" if on_device else "cpu"  # "meta" stands in for an accelerator here
    for split in (splits.train, splits.train_eval, splits.test):
        assert split.images.device.type == expected and split.labels.device.type == expected


# --------------------------------------------------------------------------------------------
# Batches and augmentation
# --------------------------------------------------------------------------------------------


def toy_split(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> ImageTensors:
    """Random images whose label is their index, so a batch says where each example came from."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        1, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8
    )
    return ImageTensors(images, torch.arange(n))


def translated(image: torch.Tensor, dy: int, dx: int, shift: int) -> torch.Tensor:
    """The paper's augmentation by hand: zero-pad by `shift`, take the window moved by (dy, dx)."""
    height, width = image.shape[-2:]
    padded = functional.pad(image, (shift, shift, shift, shift))
    return padded[..., shift - dy : shift - dy + height, shift - dx : shift - dx + width]


def test_train_batches_shapes_dtype_range_and_last_partial_batch() -> None:
    split = toy_split(10)
    cfg = cfg_for("mnist", "unused", shift=2)
    batches = list(train_batches(split, cfg, 4, torch.Generator().manual_seed(0), CPU))
    assert [len(y) for _, y, _ in batches] == [4, 4, 2] and num_batches(10, 4) == 3
    for x, y, _ in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert y.dtype == torch.int64 and x.device.type == "cpu"
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_train_batches_without_augmentation_return_the_images() -> None:
    split = toy_split(9, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=0)
    for x, y, _ in train_batches(split, cfg, 4, torch.Generator().manual_seed(1), CPU):
        assert torch.equal(x, split.images[y].float() / 255)


def test_epoch_visits_every_example_once() -> None:
    split = toy_split(23, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    seen = torch.cat([y for _, y, _ in train_batches(split, cfg, 5, torch.Generator(), CPU)])
    assert torch.equal(torch.sort(seen).values, torch.arange(23))


def test_same_generator_seed_gives_identical_batches() -> None:
    split = toy_split(20, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)

    def epoch(seed: int) -> list[Batch]:
        return list(train_batches(split, cfg, 8, torch.Generator().manual_seed(seed), CPU))

    first, second, other = epoch(5), epoch(5), epoch(6)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, second, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])


def test_augment_translation_is_a_zero_padded_shifted_copy() -> None:
    images = toy_split(4).images  # (4, 1, 28, 28)
    offsets = torch.tensor([[2, -1], [-2, 2], [0, 0], [1, -2]])
    out = augment(images, Augmentation(translate=offsets))
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], translated(images[b], dy, dx, shift=2))
    # spelled out for example 0: content moves down 2 and left 1; vacated rows/cols are zero
    assert out[0, 0, 5, 7] == images[0, 0, 3, 8]
    assert (out[0, 0, :2] == 0).all() and (out[0, 0, :, -1] == 0).all()


def test_train_batches_translate_by_the_offsets_drawn_from_the_generator() -> None:
    split = toy_split(12)
    cfg = cfg_for("mnist", "unused", shift=2)
    x, y, _ = next(iter(train_batches(split, cfg, 6, torch.Generator().manual_seed(3), CPU)))
    replay = torch.Generator().manual_seed(3)  # draw order: permutation, then per-batch offsets
    assert torch.equal(torch.randperm(12, generator=replay)[:6], y)
    offsets = sample_augmentation(6, cfg, 28, replay).translate
    assert (
        offsets is not None and offsets.abs().max() <= 2 and len(torch.unique(offsets, dim=0)) > 1
    )
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(x[b], translated(split.images[y[b]], dy, dx, shift=2).float() / 255)


def test_crop_and_flip_give_windows_of_the_source() -> None:
    split = toy_split(40, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=0, crop=24, hflip=True)
    plain_at, mirrored_at = [], []
    for x, y, _ in train_batches(split, cfg, 16, torch.Generator().manual_seed(0), CPU):
        assert x.shape[1:] == (3, 24, 24)
        sources = split.images[y].float() / 255  # (B, 3, 32, 32)
        windows = sources.unfold(2, 24, 1).unfold(3, 24, 1)  # (B, 3, 9, 9, 24, 24)
        plain = (windows == x[:, :, None, None]).all(5).all(4).all(1)  # (B, 9, 9)
        mirrored = (windows == x.flip(-1)[:, :, None, None]).all(5).all(4).all(1)  # (B, 9, 9)
        assert (plain.flatten(1).any(1) | mirrored.flatten(1).any(1)).all()
        plain_at += plain.flatten(1).float().argmax(1)[plain.flatten(1).any(1)].tolist()
        mirrored_at += mirrored.flatten(1).float().argmax(1)[mirrored.flatten(1).any(1)].tolist()
    assert plain_at and mirrored_at  # both flip states occur
    assert len(set(plain_at + mirrored_at)) > 5  # and the window moves


def test_augment_composes_translation_crop_and_flip() -> None:
    images = toy_split(3, channels=3, size=32).images  # (3, 3, 32, 32)
    aug = Augmentation(
        translate=torch.tensor([[1, -2], [-2, 0], [2, 2]]),
        crop=24,
        crop_offset=torch.tensor([[0, 8], [3, 1], [8, 0]]),
        flip=torch.tensor([True, False, True]),
    )
    out = augment(images, aug)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.uint8
    for b in range(3):
        (dy, dx), (top, left) = aug.translate[b].tolist(), aug.crop_offset[b].tolist()
        expected = translated(images[b], dy, dx, shift=2)[:, top : top + 24, left : left + 24]
        if aug.flip[b]:
            expected = expected.flip(-1)
        assert torch.equal(out[b], expected)


def test_eval_batches_are_in_order_with_a_centre_crop() -> None:
    split = toy_split(10, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    batches = list(eval_batches(split, cfg, 4, CPU))
    assert torch.equal(torch.cat([y for _, y, _ in batches]), torch.arange(10))
    x = torch.cat([x for x, _, _ in batches])
    assert torch.equal(x, split.images[:, :, 4:28, 4:28].float() / 255)
    uncropped = torch.cat([x for x, _, _ in eval_batches(split, cfg_for("cifar10", "u"), 3, CPU)])
    assert torch.equal(uncropped, split.images.float() / 255)


def test_input_shape_follows_the_crop() -> None:
    assert input_shape(cfg_for("mnist", "u")) == (1, 28, 28)
    assert input_shape(cfg_for("cifar10", "u", crop=24)) == (3, 24, 24)
    with pytest.raises(ConfigError, match=r"dataset\.crop=40"):
        input_shape(cfg_for("cifar10", "u", crop=40))
    with pytest.raises(ConfigError, match=r"dataset\.crop=40"):
        train_batches(
            toy_split(4, 3, 32), cfg_for("cifar10", "u", crop=40), 2, torch.Generator(), CPU
        )


def test_image_tensors_subset_and_validation() -> None:
    split = toy_split(6)
    part = split.subset(torch.tensor([4, 1]))
    assert len(part) == 2 and part.labels.tolist() == [4, 1]
    assert torch.equal(part.images[0], split.images[4])
    with pytest.raises(ValueError, match="uint8"):
        ImageTensors(split.images.float(), split.labels)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        ImageTensors(split.images, split.labels[:5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmented_batches_are_identical_on_cuda_and_cpu() -> None:
    split = toy_split(50, channels=3, size=32)
    cfg = cfg_for("cifar10", "unused", shift=2, crop=24, hflip=True)
    cuda = torch.device("cuda")
    on_cpu = train_batches(split, cfg, 16, torch.Generator().manual_seed(9), CPU)
    on_gpu = train_batches(split.to(cuda), cfg, 16, torch.Generator().manual_seed(9), cuda)
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(on_cpu, on_gpu, strict=True):
        assert x_gpu.device.type == "cuda"
        assert torch.equal(x_cpu, x_gpu.cpu()) and torch.equal(y_cpu, y_gpu.cpu())
    evaluated_cpu = torch.cat([x for x, _, _ in eval_batches(split, cfg, 16, CPU)])
    evaluated_gpu = torch.cat([x for x, _, _ in eval_batches(split, cfg, 16, cuda)])
    assert torch.equal(evaluated_cpu, evaluated_gpu.cpu())
