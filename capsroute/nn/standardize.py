"""Per-image standardisation of a network's input (`model.standardize`).

The authors' smallNORB code standardises every image before the network
(`tf.image.per_image_standardization`: zero mean and unit variance over all its pixels and
channels, the deviation floored at 1/sqrt(pixels) so a flat image does not blow up). Here it is
the networks' first step, so training, evaluation and pictures all see it, while the decoder
still reconstructs the [0, 1] pixels (the sigmoid decoder cannot produce standardised values).
"""

from __future__ import annotations

import math

from torch import Tensor


def standardize_images(images: Tensor) -> Tensor:
    """(B, C, H, W) -> the same images, each with zero mean and unit variance (TF's rule)."""
    flat = images.flatten(1)  # (B, C*H*W)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, unbiased=False, keepdim=True)
    floor = 1.0 / math.sqrt(flat.shape[1])
    return ((flat - mean) / std.clamp_min(floor)).view_as(images)
