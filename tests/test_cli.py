"""The real `capsroute` entry point: end-to-end training and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

CAPSROUTE = shutil.which("capsroute", path=str(Path(sys.executable).parent)) or "capsroute"


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [CAPSROUTE, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and pattern in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_train_end_to_end_on_real_mnist(tmp_path: Path, data_root: Path) -> None:
    """2,000 training images, one epoch, batch 32: the paper's network learns MNIST.

    Measured on the 2-core development CPU: 83.2% test accuracy on the 1,000-image test
    subset after these 63 steps; the assertion (> 60%) leaves room for other platforms'
    numerics while being far above the 10% of chance.
    """
    result = run_cli(
        "train",
        "dataset.train_size=2000",
        "dataset.test_size=1000",
        "dataset.train_eval_size=500",
        "train.epochs=1",
        "train.batch_size=32",
        cwd=tmp_path,
        env={"CAPSROUTE_DATA": str(data_root)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "outputs" / "runs" / "mnist-r3-s0"
    for name in (
        "metrics.csv",
        "routing.csv",
        "summary.json",
        "checkpoint.pt",
        "capsroute.log",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_test_acc"] > 0.6
    assert "epoch 1/1" in (run / "capsroute.log").read_text()


def test_rerun_of_a_completed_run_does_nothing(tmp_path: Path, tiny_overrides: list[str]) -> None:
    overrides = [*tiny_overrides, "train.epochs=1", "run_name=tiny"]
    assert run_cli("train", *overrides, cwd=tmp_path).returncode == 0
    checkpoint = tmp_path / "outputs" / "runs" / "tiny" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = run_cli("train", *overrides, cwd=tmp_path)
    assert again.returncode == 0
    assert "already completed" in again.stdout
    assert checkpoint.stat().st_mtime_ns == stamp


def test_info_reports_parameter_counts(tmp_path: Path, data_root: Path) -> None:
    result = run_cli("info", "--json", f"dataset.root={data_root}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["parameters"] == {"total": 8215568, "without_decoder": 6804224}
    assert details["data"]["train"] == 60000 and details["data"]["test"] == 10000
    assert details["device"] == "cpu"
    assert not (tmp_path / "outputs").exists()


BAD_INPUTS = [
    (["train", "routing.iterations=0"], "routing.iterations must be >= 1"),
    (["train", "routing.iterations=-2"], "routing.iterations must be >= 1"),
    (["train", "routing.iterations=two"], "could not be converted to Integer"),
    (["train", "routing.iter=3"], "unknown config key 'routing.iter'"),
    (["train", "+foo=1"], "Key 'foo' not in 'Config'"),
    (["train", "dataset=svhn"], "unknown dataset 'svhn'; choose one of: cifar10, mnist"),
    (["train", "dataset.name=svhn"], "unknown dataset 'svhn'"),
    (["train", "train.lr=-0.1"], "train.lr must be > 0"),
    (["train", "train.batch_size=0"], "train.batch_size must be > 0"),
    (["train", "train.precision=fp8"], "train.precision must be one of"),
    (["train", "routing.grad=none"], "routing.grad must be one of"),
    (["train", "device=tpu"], "unknown device 'tpu'"),
    (["train", "seed=[1"], "no viable alternative"),
    (["train", "routing.iterations"], "is not an override"),
    (["train", "--bogus"], "unknown option '--bogus'"),
    (["info", "run_name=../../etc"], "without '..'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert_one_line_error(run_cli(*args, cwd=tmp_path), 2, message)
    assert not (tmp_path / "outputs").exists()


def test_cuda_requested_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert_one_line_error(run_cli("info", "device=cuda", cwd=tmp_path), 2, "no CUDA GPU")


def test_missing_data_names_the_root_and_the_fix(tmp_path: Path) -> None:
    result = run_cli("train", f"dataset.root={tmp_path / 'nowhere'}", *TINY_MODEL, cwd=tmp_path)
    assert_one_line_error(result, 2, str(tmp_path / "nowhere"))
    assert "dataset.download=true" in result.stderr or "CAPSROUTE_DATA" in result.stderr


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
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "blocker" in result.stderr


def test_user_config_dir_adds_a_dataset_option(tmp_path: Path, data_root: Path) -> None:
    """A config folder given with --config-dir extends the packaged config groups."""
    (tmp_path / "myconf" / "dataset").mkdir(parents=True)
    (tmp_path / "myconf" / "dataset" / "mnist_small.yaml").write_text(
        "# @package _global_\ndataset:\n  name: mnist\n  train_size: 300\n  test_size: 200\n"
    )
    result = run_cli(
        "info",
        "--json",
        "--config-dir",
        str(tmp_path / "myconf"),
        "dataset=mnist_small",
        f"dataset.root={data_root}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["data"]["train"] == 300 and details["data"]["test"] == 200
