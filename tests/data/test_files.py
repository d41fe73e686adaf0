"""Tests for capsroute.datasets: on-disk formats, loading, one-line errors, download, check.

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

from capsroute.config import DatasetConfig
from capsroute.data import files as datasets
from capsroute.data.files import DATASET_INFO, check, load_split
from capsroute.errors import ConfigError, DataError

REAL_ROOT = Path(
    os.environ.get("CAPSROUTE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
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
        datasets.download(name, tmp_path)
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
        datasets.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "Error downloading train-images-idx3-ubyte.gz: Tried a")


def test_download_skips_files_already_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mnist(tmp_path)
    make_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _no_network)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_network)
    datasets.download("mnist", tmp_path)  # torchvision sees the raw files and fetches nothing
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
        datasets.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "permission denied", "writable")


def test_download_over_corrupt_files_reports_the_corruption(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])  # present, so torchvision does not re-fetch it
    with pytest.raises(DataError) as excinfo:
        datasets.download("mnist", tmp_path)
    assert_one_line_error(excinfo, "train-labels-idx1-ubyte", "truncated")


def test_download_unknown_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        datasets.download("imagenet", tmp_path)


# --------------------------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------------------------


def test_check_reports_presence_and_loadability(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=30, n_test=10)
    statuses = {status.name: status for status in check(tmp_path, verify=True)}
    mnist, cifar = statuses["mnist"], statuses["cifar10"]
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
    cifar = next(s for s in check(tmp_path, verify=True) if s.name == "cifar10")
    assert cifar.present and not cifar.loadable and "dataset.verify=false" in cifar.message
    cifar = next(s for s in check(tmp_path, verify=False) if s.name == "cifar10")
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
