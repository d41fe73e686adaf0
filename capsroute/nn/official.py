"""The official TensorFlow code's layer conventions, where they differ from the paper's text.

Sabour et al.'s public code (Sarasra/models, `research/capsules`) pads its convolutions with
TensorFlow's 'SAME' rule for CIFAR-10 and initialises every layer from `variables.py`:
truncated normals (cut at 2 standard deviations) and constant 0.1 biases. These helpers give
the CapsNet (`capsnet.py`) those conventions when `model.padding=same` and
`model.init=official`; the README's "Paper mode and official-code mode" lists every
difference.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# models/layers/variables.py: weight_variable(stddev=0.1), bias_variable -> constant 0.1; the
# CapsNet's conv1 passes stddev=5e-2
OFFICIAL_STD = 0.1
OFFICIAL_CONV1_STD = 0.05
OFFICIAL_BIAS = 0.1


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding along one axis: (before, after).

    The output has ceil(size / stride) positions; the total padding they need is split with
    the smaller half first, so it is uneven when odd (24 px, kernel 9, stride 2: 3 and 4)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial size after a convolution with `padding` 'valid' (none) or 'same'."""
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def pad_for(
    height: int, width: int, kernel: int, stride: int, padding: str
) -> tuple[int, int, int, int]:
    """`torch.nn.functional.pad` amounts (left, right, top, bottom) for `padding`."""
    if padding != "same":
        return (0, 0, 0, 0)
    return (*same_padding(width, kernel, stride), *same_padding(height, kernel, stride))


def pad_input(x: torch.Tensor, kernel: int, stride: int, padding: str) -> torch.Tensor:
    """x (B, C, H, W) zero-padded for a convolution with `padding`; x itself (no copy) for
    'valid'."""
    if padding != "same":
        return x
    return nn.functional.pad(x, pad_for(x.shape[2], x.shape[3], kernel, stride, padding))


def truncated_normal_(weight: torch.Tensor, std: float) -> None:
    """TensorFlow's truncated_normal_initializer: N(0, std^2) redrawn outside +-2 std."""
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def official_init(
    conv1: nn.Conv2d,
    primary_weight: torch.Tensor,
    biases: Iterable[torch.Tensor],
    linears: Iterable[nn.Linear],
) -> None:
    """Initialise as the official code: conv1's weight ~ truncated N(0, 0.05^2), the PrimaryCaps
    kernel and every decoder layer's weight ~ truncated N(0, 0.1^2), conv1's bias and all of
    `biases` (PrimaryCaps, digit capsules) and every decoder bias = 0.1. W_ij keeps its own
    truncated normal (`model.weight_std`, 0.1 as the official code)."""
    with torch.no_grad():
        truncated_normal_(conv1.weight, OFFICIAL_CONV1_STD)
        if conv1.bias is not None:
            conv1.bias.fill_(OFFICIAL_BIAS)
        truncated_normal_(primary_weight, OFFICIAL_STD)
        for bias in biases:
            bias.fill_(OFFICIAL_BIAS)
        for linear in linears:
            truncated_normal_(linear.weight, OFFICIAL_STD)
            linear.bias.fill_(OFFICIAL_BIAS)
