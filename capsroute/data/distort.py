"""The official code's CIFAR-10 photometric distortions and per-image standardisation
(`input_data/cifar10/cifar10_input.py`), for `dataset.distort=official`.

After the random 24x24 crop and flip (`batches.augment`), a training image gets
`tf.image.random_brightness(max_delta=63)` (on 0-255 pixels: + U[-63, 63], no clipping), then
`tf.image.random_contrast(0.2, 1.8)` (each channel moved away from its mean by a factor
U[0.2, 1.8)), and training and test images alike get `tf.image.per_image_standardization`:
(x - mean) / max(std, 1 / sqrt(N)) over all N = C x H x W values of the image, computed on the
0-255 scale as TensorFlow does. The paper's text names only crops and flips (capsroute's
default, images in [0, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BRIGHTNESS_DELTA = 63 / 255  # max_delta=63 on 0-255 pixels; capsroute's pixels are in [0, 1]
CONTRAST_RANGE = (0.2, 1.8)
PIXEL_SCALE = 255.0  # TensorFlow standardises the 0-255 floats


def sample_photometric(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per example: brightness offsets (B,) in [-63/255, 63/255) and contrast factors (B,) in
    [0.2, 1.8), drawn on the CPU from `generator` in that order."""
    delta = (torch.rand(batch, generator=generator) * 2 - 1) * BRIGHTNESS_DELTA
    low, high = CONTRAST_RANGE
    factor = low + torch.rand(batch, generator=generator) * (high - low)
    return delta, factor


def photometric(images: Tensor, delta: Tensor, factor: Tensor) -> Tensor:
    """Brightness then contrast on images (B, C, H, W) float: x + δ, then per channel
    (x - mean_c) f + mean_c with mean_c over the H x W pixels."""
    shifted = images + delta.to(images.device, images.dtype)[:, None, None, None]
    mean = shifted.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return (shifted - mean) * factor.to(images.device, images.dtype)[:, None, None, None] + mean


def standardise(images: Tensor) -> Tensor:
    """`tf.image.per_image_standardization` of images (B, C, H, W) in [0, 1] (scaled to 0-255
    first, so the 1 / sqrt(N) floor on the std is TensorFlow's): zero mean, unit std each."""
    scaled = images * PIXEL_SCALE
    count = scaled[0].numel()
    mean = scaled.mean(dim=(1, 2, 3), keepdim=True)
    std = scaled.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return (scaled - mean) / std.clamp_min(1.0 / math.sqrt(count))


def distort_train(images: Tensor, generator: torch.Generator) -> Tensor:
    """A training batch (B, C, H, W) in [0, 1], cropped and flipped: brightness, contrast, then
    standardisation (the official training pipeline's last three steps)."""
    delta, factor = sample_photometric(images.shape[0], generator)
    return standardise(photometric(images, delta, factor))
