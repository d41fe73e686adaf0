"""affNIST's published file layout, written here by scipy exactly as the real files are laid out:
a MATLAB level-5 file holding one 1x1 struct `affNISTdata` whose `image` field is 1600 x N
uint8 (one 40x40 image per column) and `label_int` 1 x N, plus fields the reader must skip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from capsroute.data import affnist, canvas
from capsroute.data.files import DATASET_INFO, check
from capsroute.errors import DataError


def asymmetric_images(n: int) -> np.ndarray:
    """(N, 40, 40) uint8 images that differ from their transposes (a bar plus a corner dot)."""
    images = np.zeros((n, 40, 40), np.uint8)
    for k in range(n):
        images[k, 2 + k, 5:30] = 200
        images[k, 35, 3] = 255 - k
    return images


def write_affnist(path: Path, images: np.ndarray, labels: np.ndarray, by_rows: bool) -> None:
    """The real layout: image (1600, N) uint8, one image per column, row by row when `by_rows`;
    `label_int` (1, N); `label_one_of_n` (10, N) and a transform field the reader ignores."""
    flat = images if by_rows else images.transpose(0, 2, 1)
    onehot = np.zeros((10, len(labels)), np.uint8)
    onehot[labels, np.arange(len(labels))] = 1
    struct = {
        "affine_transform": np.zeros((6, len(labels))),
        "image": np.ascontiguousarray(flat.reshape(len(labels), 1600).T),
        "label_int": labels.astype(np.uint8).reshape(1, -1),
        "label_one_of_n": onehot,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"affNISTdata": struct}, format="5", do_compression=True)


def test_reader_returns_the_images_and_labels_the_published_layout_holds(tmp_path: Path) -> None:
    images, labels = asymmetric_images(5), np.array([3, 1, 4, 1, 5])
    path = tmp_path / "test.mat"
    write_affnist(path, images, labels, by_rows=affnist.PIXEL_ORDER == "row")
    assert path.read_bytes().startswith(b"MATLAB 5.0 MAT-file")
    got, got_labels = affnist.read_mat(path)
    assert got.shape == (5, 1, 40, 40) and got.dtype == torch.uint8
    assert torch.equal(got[:, 0], torch.from_numpy(images))
    assert got_labels.tolist() == [3, 1, 4, 1, 5] and got_labels.dtype == torch.int64


def test_the_other_pixel_order_reads_transposed_digits(tmp_path: Path) -> None:
    images = asymmetric_images(3)
    path = tmp_path / "test.mat"
    write_affnist(path, images, np.array([0, 1, 2]), by_rows=True)
    by_cols, _ = affnist.read_mat(path, order="col")
    assert torch.equal(by_cols[:, 0], torch.from_numpy(images).transpose(1, 2))
    assert (
        set(affnist.PIXEL_ORDERS) == {"row", "col"} and affnist.PIXEL_ORDER in affnist.PIXEL_ORDERS
    )


def test_orientation_check_tells_row_from_column_order_on_just_centered_files(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    mnist = torch.from_numpy(rng.integers(0, 255, (4, 1, 28, 28), dtype=np.uint8))
    padded = canvas.centre(mnist)[:, 0].numpy()
    for by_rows, expected in ((True, "row"), (False, "col")):
        path = tmp_path / f"jc-{expected}.mat"
        write_affnist(path, padded, np.arange(4), by_rows=by_rows)
        centred, _ = affnist.read_mat(path, order="row")
        assert affnist.orientation_check(centred, mnist) == expected
    assert affnist.orientation_check(torch.zeros(4, 1, 40, 40, dtype=torch.uint8), mnist) == (
        "neither"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"other": {"image": np.zeros((1600, 1), np.uint8)}}, "not an affNIST file"),
        (
            {"affNISTdata": {"image": np.zeros((784, 2), np.uint8), "label_int": np.zeros((1, 2))}},
            "expected uint8 (1600, N)",
        ),
        (
            {
                "affNISTdata": {
                    "image": np.zeros((1600, 2), np.uint8),
                    "label_int": np.zeros((1, 3)),
                }
            },
            "2 images but label_int",
        ),
    ],
)
def test_files_that_are_not_affnist_are_one_line_data_errors(
    tmp_path: Path, content: dict, message: str
) -> None:
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, content, format="5")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        affnist.read_mat(path)
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="unreadable as a MATLAB file"):
        affnist.read_mat(path)


def test_dataset_root_layout_missing_files_and_data_check(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing affNIST/transformed/test\.mat.*affine_mnist"):
        affnist.load(tmp_path, train=False)
    assert DATASET_INFO["affnist"].files == (affnist.TEST_FILE, affnist.VALIDATION_FILE)
    write_affnist(tmp_path / affnist.TEST_FILE, asymmetric_images(3), np.array([7, 8, 9]), True)
    write_affnist(tmp_path / affnist.VALIDATION_FILE, asymmetric_images(2), np.array([0, 1]), True)
    images, labels = affnist.load(tmp_path, train=False)
    assert images.shape == (3, 1, 40, 40) and labels.tolist() == [7, 8, 9]
    status = next(s for s in check(tmp_path, verify=True) if s.name == "affnist")
    assert status.loadable and (status.train_count, status.test_count) == (2, 3), status.message
