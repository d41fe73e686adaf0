"""Every mistake a user can make gets one line naming the problem and the fix, exit status 2.

Table-driven through the real `capsroute` entry point. Exit status 2 means bad input (nothing
was trained or written); 1 is reserved for runtime failures, 130 for interruptions.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.conftest import TINY_MODEL

# (arguments, text the one error line must contain)
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["train", "routing.iterations=0"], "routing.iterations must be >= 1"),
    (["train", "routing.iterations=-2"], "routing.iterations must be >= 1"),
    (["train", "routing.iterations=two"], "could not be converted to Integer"),
    (["train", "routing.iter=3"], "unknown config key 'routing.iter'"),
    (["train", "+foo=1"], "Key 'foo' not in 'Config'"),
    (
        ["train", "dataset=imagenet"],
        "unknown dataset 'imagenet'; choose one of: affine_mnist, affnist, cifar10, fashion_mnist, "
        "mnist, mnist40, multimnist, smallnorb, svhn",
    ),
    (
        ["train", "dataset=multimnist", "dataset.shift=2"],
        "dataset=multimnist is shifted when it is generated",
    ),
    (["train", "dataset=multimnist", "model=baseline_cnn"], "dataset=multimnist needs the CapsNet"),
    (["train", "dataset.name=imagenet"], "unknown dataset 'imagenet'"),
    (["train", "train.lr=-0.1"], "train.lr must be > 0"),
    (["train", "train.batch_size=0"], "train.batch_size must be > 0"),
    (["train", "train.epochs=0"], "train.epochs must be > 0"),
    (["train", "train.precision=fp8"], "train.precision must be one of"),
    (["train", "routing.grad=none"], "routing.grad must be one of"),
    (["train", "device=tpu"], "unknown device 'tpu'"),
    (["train", "seed=[1"], "no viable alternative"),
    (["train", "routing.iterations"], "is not an override"),
    (["train", "--bogus"], "unknown option '--bogus'"),
    (["info", "run_name=../../etc"], "must be one directory name"),
    (["info", "--config-dir", "/no/such/dir"], "is not a directory"),
    (["sweep", "--iters", ""], "--iters needs a comma-separated list"),
    (["sweep", "--iters", "1,,3"], "--iters needs a comma-separated list"),
    (["sweep", "--iters", "0,1"], "--iters: '0' is not an integer >= 1"),
    (["sweep", "--iters", "1,x"], "--iters: 'x' is not an integer >= 1"),
    (["sweep", "--iters", "3,3"], "--iters: '3' is listed twice"),
    (["sweep", "--iters", "1", "--seeds", "-1"], "--seeds: '-1' is not an integer >= 0"),
    (["sweep", "--iters", "1", "--datasets", "imagenet"], "unknown dataset 'imagenet'"),
    (["sweep", "--iters", "1", "--launcher", "ray"], "launcher"),
    (["sweep", "--iters", "1", "--name", "../x"], "--name '../x' must be one directory name"),
    (["report", "/no/such/sweep"], "no such path"),
    (["data", "download", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert_one_line_error(run_cli(*args, cwd=tmp_path), 2, message)
    assert not (tmp_path / "outputs").exists()


def test_report_on_a_directory_without_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("report", "empty", cwd=tmp_path), 2, "no run directories")


def test_cuda_requested_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_one_line_error(run_cli("info", "device=cuda", cwd=tmp_path), 2, "no CUDA GPU")


def test_missing_data_names_the_root_and_the_fix(tmp_path: Path) -> None:
    result = run_cli("train", f"dataset.root={tmp_path / 'nowhere'}", *TINY_MODEL, cwd=tmp_path)
    assert_one_line_error(result, 2, str(tmp_path / "nowhere"))
    assert "dataset.download=true" in result.stderr or "CAPSROUTE_DATA" in result.stderr


def test_corrupt_data_files_are_named(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", 60), ("t10k", 10)):
        images = struct.pack(">IIII", 2051, count, 28, 28) + bytes(28 * 28 * count)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images[:-100])  # truncated
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + bytes(count)
        )
    result = run_cli("train", f"dataset.root={tmp_path / 'data'}", *TINY_MODEL, cwd=tmp_path)
    assert_one_line_error(result, 2, "images-idx3-ubyte")


def test_corrupt_checkpoint_is_named(tmp_path: Path, tiny_overrides: list[str]) -> None:
    run = tmp_path / "outputs" / "runs" / "broken"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"\x00not a checkpoint")
    result = run_cli("train", *tiny_overrides, "run_name=broken", cwd=tmp_path)
    assert_one_line_error(result, 2, str(run / "checkpoint.pt"))
    assert (run / "checkpoint.pt").read_bytes() == b"\x00not a checkpoint"


def test_unwritable_output_root(tmp_path: Path, tiny_overrides: list[str]) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory")
    result = run_cli("train", *tiny_overrides, "out_root=blocker", cwd=tmp_path)
    assert_one_line_error(result, 2, "cannot write to output directory blocker")
