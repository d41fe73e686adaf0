"""Shared fixtures: where the real datasets are, and a tiny config for fast training tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A CapsNet with the paper's structure but few channels: training-loop behaviour (files,
# resume, determinism) does not depend on width, and this trains in a second on a CPU.
TINY_MODEL = [
    "model.conv1_channels=16",
    "model.primary_types=4",
    "model.decoder_hidden=[32,64]",
]


def shared_data_root() -> Path:
    """$CAPSROUTE_DATA if set, else ../shared/data beside the checkout."""
    return Path(os.environ.get("CAPSROUTE_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST/CIFAR-10 files (read-only); tests needing them skip when absent."""
    root = shared_data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real datasets not found under {root} (set CAPSROUTE_DATA)")
    return root


def tiny_run_overrides(data_root: Path) -> list[str]:
    """Overrides for a seconds-long MNIST run: 256 train / 128 test images, tiny model."""
    return [
        f"dataset.root={data_root}",
        "dataset.train_size=256",
        "dataset.test_size=128",
        "dataset.train_eval_size=64",
        "train.batch_size=64",
        "train.eval_batch_size=128",
        "train.epochs=2",
        "train.progress=false",
        *TINY_MODEL,
    ]


@pytest.fixture()
def tiny_overrides(data_root: Path) -> list[str]:
    """`tiny_run_overrides` on the real data (skips when the data are absent)."""
    return tiny_run_overrides(data_root)
