"""`train_batches` without a host sync per batch (used for CUDA training).

`batches.train_batches` moves each batch's index slice and augmentation draws to the device
as it goes: small copies from pageable memory, each of which makes the host wait for all
queued GPU work, so the CPU never runs ahead and every gap between its launches is idle GPU
time. Here the whole epoch's random draws are made first, from the same generator in the same
order (the permutation, then each batch's translation, crop and flip), copied to the device
once, and the batches are cut there: the same batches, bit for bit, with no sync.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from capsroute.config import DatasetConfig
from capsroute.data.batches import (
    Augmentation,
    Batch,
    augment,
    digit_parts,
    num_batches,
    output_size,
    sample_augmentation,
    to_float,
)
from capsroute.data.files import ImageTensors


def _to_device(parts: list[Tensor | None], device: torch.device) -> Tensor | None:
    """The per-batch draws of one kind concatenated and copied once (pinned on CUDA)."""
    if not parts or parts[0] is None:
        return None
    host = torch.cat([p for p in parts if p is not None])  # (N, ...)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def epoch_batches(
    data: ImageTensors,
    cfg: DatasetConfig,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[Batch]:
    """The batches of `train_batches(data, cfg, batch_size, generator, device)`, bit-identical,
    with every random draw of the epoch made and moved to `device` at the call."""
    if generator.device.type != "cpu":
        raise ValueError(f"epoch_batches needs a CPU generator, got one on {generator.device}")
    count = len(data)
    num_batches(count, batch_size)  # validates batch_size
    size = data.images.shape[-1]
    output_size(cfg, size)
    order = torch.randperm(count, generator=generator)  # (N,) drawn first, as train_batches
    starts = range(0, count, batch_size)
    draws = [sample_augmentation(min(batch_size, count - s), cfg, size, generator) for s in starts]
    translate = _to_device([a.translate for a in draws], device)  # (N, 2) or None
    crop_offset = _to_device([a.crop_offset for a in draws], device)  # (N, 2) or None
    flip = _to_device([a.flip for a in draws], device)  # (N,) or None
    crop = draws[0].crop if draws else None
    on_data = data.images.device
    order_there = (
        order.pin_memory().to(on_data, non_blocking=True) if on_data.type == "cuda" else order
    )

    def batches() -> Iterator[Batch]:
        for start in starts:
            stop = min(start + batch_size, count)
            index = order_there[start:stop]  # (B,)
            images = data.images[index].to(device)  # (B, C, H, W) uint8
            labels = data.labels[index].to(device)
            aug = Augmentation(
                translate=None if translate is None else translate[start:stop],
                crop=crop,
                crop_offset=None if crop_offset is None else crop_offset[start:stop],
                flip=None if flip is None else flip[start:stop],
            )
            yield Batch(to_float(augment(images, aug)), labels, digit_parts(data, index, device))

    return batches()
