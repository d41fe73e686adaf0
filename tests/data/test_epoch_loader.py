"""The sync-free epoch loader yields exactly `train_batches`' batches (CUDA training uses it)."""

from __future__ import annotations

import pytest
import torch

from capsroute.config import DatasetConfig
from capsroute.data.batches import train_batches
from capsroute.data.epoch_loader import epoch_batches
from capsroute.data.files import ImageTensors

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "augmentation", [{"shift": 2}, {"shift": 0}, {"shift": 2, "crop": 24, "hflip": True}]
)
def test_epoch_batches_equal_train_batches(device: str, augmentation: dict[str, object]) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=generator)
    data = ImageTensors(images, torch.randint(0, 10, (300,), generator=generator)).to(device)
    cfg = DatasetConfig(**augmentation)
    args = (data, cfg, 128, torch.device(device))
    want = list(train_batches(*args[:3], torch.Generator().manual_seed(5), args[3]))
    got = list(epoch_batches(*args[:3], torch.Generator().manual_seed(5), args[3]))
    assert [len(b.labels) for b in got] == [128, 128, 44]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert b.images.device.type == device
