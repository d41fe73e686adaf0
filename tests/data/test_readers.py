"""Fashion-MNIST, SVHN and smallNORB: tiny files in each published layout, read by the real
readers, and damaged files refused in one line that names the file and the download command."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from capsroute.data import smallnorb, svhn
from capsroute.data.files import check, download, load_split
from capsroute.errors import DataError
from tests.data.formats import make_fashion_mnist, make_smallnorb, make_svhn, norb_matrix
from tests.data.test_files import assert_one_line_error, cfg_for


def expected_resize(dat: np.ndarray) -> np.ndarray:
    """(N, 2, 96, 96) -> (N, 2, 48, 48): each 2 x 2 block's mean, rounded half to even."""
    blocks = dat.astype(np.float64).reshape(*dat.shape[:2], 48, 2, 48, 2).mean(axis=(3, 5))
    return np.round(blocks).astype(np.uint8)


# --- Fashion-MNIST ----------------------------------------------------------------------------


def test_fashion_mnist_idx_files_round_trip(tmp_path: Path) -> None:
    arrays = make_fashion_mnist(tmp_path)
    for train, key in ((True, "train"), (False, "t10k")):
        split = load_split(cfg_for("fashion_mnist", tmp_path), train=train)
        images, labels = arrays[key]
        assert split.images.shape == (len(labels), 1, 28, 28)
        assert np.array_equal(split.images[:, 0].numpy(), images)
        assert split.labels.tolist() == labels.tolist()


def test_fashion_mnist_needs_all_four_files_and_names_the_missing_one(tmp_path: Path) -> None:
    make_fashion_mnist(tmp_path)
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("fashion_mnist", tmp_path), train=True)
    assert_one_line_error(
        excinfo, "t10k-labels-idx1-ubyte", "capsroute data download --dataset fashion_mnist"
    )


def test_truncated_fashion_mnist_file_is_named(tmp_path: Path) -> None:
    make_fashion_mnist(tmp_path)
    path = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("fashion_mnist", tmp_path), train=True)
    assert_one_line_error(excinfo, "FashionMNIST/raw/train-images-idx3-ubyte", "truncated")


# --- SVHN -------------------------------------------------------------------------------------


def test_svhn_mat_files_round_trip_without_md5(tmp_path: Path) -> None:
    arrays = make_svhn(tmp_path)
    for train, key in ((True, "train"), (False, "test")):
        split = load_split(cfg_for("svhn", tmp_path, verify=False), train=train)
        images, labels = arrays[key]
        assert torch.equal(split.images, torch.from_numpy(images))  # orientation kept
        assert split.labels.tolist() == labels.tolist()  # 10 read as the digit 0


def test_svhn_md5_checked_load_matches_and_tiny_copies_need_verify_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_svhn(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("svhn", tmp_path), train=True)
    assert_one_line_error(excinfo, "svhn/train_32x32.mat", "md5", "dataset.verify=false")

    def md5(name: str) -> str:
        return hashlib.md5((tmp_path / "svhn" / name).read_bytes()).hexdigest()

    split_list = {
        split: [url, name, md5(name) if split in svhn.FILES else digest]
        for split, (url, name, digest) in torchvision.datasets.SVHN.split_list.items()
    }
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)
    for train in (True, False):
        verified = load_split(cfg_for("svhn", tmp_path), train=train)
        unverified = load_split(cfg_for("svhn", tmp_path, verify=False), train=train)
        assert torch.equal(verified.images, unverified.images)
        assert torch.equal(verified.labels, unverified.labels)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [("truncate", "not a MATLAB file"), ("garbage", "not a MATLAB file"), ("shape", "32 x 32")],
)
def test_damaged_svhn_file_is_refused_in_one_line(tmp_path: Path, damage: str, needle: str) -> None:
    make_svhn(tmp_path)
    path = tmp_path / "svhn" / "train_32x32.mat"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"not a mat file" * 20)
    else:
        import scipy.io

        scipy.io.savemat(path, {"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1))})
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("svhn", tmp_path, verify=False), train=True)
    assert_one_line_error(
        excinfo, "svhn/train_32x32.mat", needle, "capsroute data download --dataset svhn"
    )


# --- smallNORB --------------------------------------------------------------------------------


def test_smallnorb_headers_are_the_documented_ones(tmp_path: Path) -> None:
    make_smallnorb(tmp_path, n_train=7, n_test=3)
    folder = tmp_path / "smallnorb"
    raw = (folder / smallnorb.file_name("train", "dat")).read_bytes()
    assert raw[:4] == bytes.fromhex("554C3D1E")  # 0x1E3D4C55 little-endian: a byte matrix
    assert struct.unpack_from("<6i", raw) == (0x1E3D4C55, 4, 7, 2, 96, 96)
    assert len(raw) == 24 + 7 * 2 * 96 * 96
    cat = (folder / smallnorb.file_name("train", "cat")).read_bytes()
    assert struct.unpack_from("<5i", cat) == (0x1E3D4C54, 1, 7, 1, 1) and len(cat) == 20 + 28
    info = (folder / smallnorb.file_name("test", "info")).read_bytes()
    assert struct.unpack_from("<5i", info) == (0x1E3D4C54, 2, 3, 4, 1)


def test_smallnorb_reads_stereo_pairs_resized_to_48(tmp_path: Path) -> None:
    arrays = make_smallnorb(tmp_path)
    for train, key in ((True, "train"), (False, "test")):
        split = load_split(cfg_for("smallnorb", tmp_path), train=train)
        dat, cat = arrays[key]
        assert split.images.shape == (len(cat), 2, 48, 48) and split.images.dtype == torch.uint8
        assert np.array_equal(split.images.numpy(), expected_resize(dat))
        assert split.labels.tolist() == cat.tolist()


def test_smallnorb_resize_averages_each_block() -> None:
    images = torch.zeros(1, 2, 96, 96, dtype=torch.uint8)
    images[0, 0, :2, :2] = torch.tensor([[0, 1], [2, 4]])  # mean 1.75 -> 2
    images[0, 1, :2, :2] = 255
    resized = smallnorb.resize_half(images)
    assert resized[0, 0, 0, 0] == 2 and resized[0, 1, 0, 0] == 255 and resized.sum() == 257


@pytest.mark.parametrize(
    ("kind", "damage", "needle"),
    [
        ("dat", "truncate", "truncated"),
        ("dat", "append", "trailing bytes"),
        ("dat", "header", "shorter than a NORB header"),
        ("cat", "magic", "expected 0x1e3d4c54"),
        ("dat", "magic", "expected 0x1e3d4c55"),
        ("info", "shape", "expected N x 4"),
        ("cat", "count", "disagree"),
    ],
)
def test_damaged_smallnorb_file_is_refused_in_one_line(
    tmp_path: Path, kind: str, damage: str, needle: str
) -> None:
    make_smallnorb(tmp_path, n_train=6, n_test=3)
    path = tmp_path / "smallnorb" / smallnorb.file_name("train", kind)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "append":
        path.write_bytes(data + b"\0")
    elif damage == "header":
        path.write_bytes(data[:5])
    elif damage == "magic":  # the other element type's magic
        other = smallnorb.BYTE_MAGIC if kind == "cat" else smallnorb.INT_MAGIC
        path.write_bytes(struct.pack("<i", other) + data[4:])
    elif damage == "shape":
        path.write_bytes(norb_matrix(np.zeros((6, 3), np.int32)))
    else:
        path.write_bytes(norb_matrix(np.zeros(5, np.int32)))
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("smallnorb", tmp_path), train=True)
    named = "train files disagree" if damage == "count" else f"smallnorb/{path.name}"
    assert_one_line_error(excinfo, named, needle, "capsroute data download --dataset smallnorb")


def test_missing_smallnorb_names_the_file_and_the_download_command(tmp_path: Path) -> None:
    make_smallnorb(tmp_path, n_train=4, n_test=2)
    (tmp_path / "smallnorb" / smallnorb.file_name("test", "info")).unlink()
    with pytest.raises(DataError) as excinfo:
        load_split(cfg_for("smallnorb", tmp_path), train=True)
    assert_one_line_error(
        excinfo,
        f"smallnorb/{smallnorb.file_name('test', 'info')}",
        "capsroute data download --dataset smallnorb",
    )


def test_check_covers_the_new_datasets(tmp_path: Path) -> None:
    make_fashion_mnist(tmp_path, 12, 4)
    make_svhn(tmp_path, 12, 4)
    make_smallnorb(tmp_path, 10, 5)
    statuses = {status.name: status for status in check(tmp_path, verify=False)}
    counts = {name: (s.train_count, s.test_count) for name, s in statuses.items() if s.loadable}
    assert counts == {"fashion_mnist": (12, 4), "svhn": (12, 4), "smallnorb": (10, 5)}
    assert "md5 not checked" in statuses["svhn"].message
    verified = {status.name: status for status in check(tmp_path, verify=True)}
    assert not verified["svhn"].loadable and "dataset.verify=false" in verified["svhn"].message
    assert verified["smallnorb"].loadable  # no published checksums to check


def _no_network(*args: object, **kwargs: object) -> None:
    raise OSError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("name", ["fashion_mnist", "svhn", "smallnorb"])
def test_download_without_network_is_one_actionable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", _no_network)
    monkeypatch.setattr(torchvision.datasets.SVHN, "download", _no_network)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _no_network)
    with pytest.raises(DataError) as excinfo:
        download(name, tmp_path)
    assert_one_line_error(
        excinfo, f"could not download {name}", "no network", f"--dataset {name} --root DIR"
    )


def test_smallnorb_download_unpacks_the_gzipped_matrices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published files are gzipped; the fetch leaves only the unpacked matrices."""
    source = tmp_path / "published"
    make_smallnorb(source, n_train=4, n_test=2)
    fetched: list[str] = []

    def fake_download(url: str, root: str, filename: str) -> None:
        assert url == smallnorb.URL + filename and filename.endswith(".mat.gz")
        fetched.append(filename)
        raw = (source / "smallnorb" / filename.removesuffix(".gz")).read_bytes()
        (Path(root) / filename).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes(gzip.compress(raw))

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    download("smallnorb", tmp_path / "data")
    assert len(fetched) == 6
    assert sorted(p.name for p in (tmp_path / "data" / "smallnorb").iterdir()) == sorted(
        p.name for p in (source / "smallnorb").iterdir()
    )
    assert len(load_split(cfg_for("smallnorb", tmp_path / "data"), train=False)) == 2
    download("smallnorb", tmp_path / "data")  # everything present: nothing fetched again
    assert len(fetched) == 6
