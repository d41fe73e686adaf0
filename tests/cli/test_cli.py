"""The real `capsroute` entry point: end-to-end training and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
