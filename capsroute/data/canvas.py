"""MNIST digits on the paper's 40x40 canvas (Sabour et al. 2017, Section 5.2, "expanded MNIST").

"each example is an MNIST digit placed randomly on a black background of 40 x 40 pixels." The
official code builds that training set with `--shift=6 --pad=6`: each 28x28 digit is padded by
6 px (-> 40x40) and written at every integer shift in [-6, 6]^2 with zero fill (169 copies).
capsroute keeps one centred copy (`centre`) and draws a fresh random shift in [-6, 6] per axis
for every example of every epoch (`dataset.shift=6`, the ordinary zero-filled translation of
`capsroute.data.batches.augment`), which samples the same 169 placements instead of
enumerating them.

The expanded-MNIST test set (and the validation split) place each digit once, at a shift drawn
from a fixed seed (`placement_offsets`), so every run is scored on the same images.
"""

from __future__ import annotations

import torch
from torch import Tensor

MNIST_SIDE = 28
CANVAS = 40  # affNIST's side
PAD = (CANVAS - MNIST_SIDE) // 2  # 6 px of background on every side of a centred digit
MAX_SHIFT = PAD  # the official code's --shift=6: every placement keeps the digit box inside
# Fixed placement seeds: the expanded-MNIST test set and the validation placements are the
# same for every run (the validation digits themselves depend on the run's seed).
EXPANDED_TEST_SEED = 2017
VALIDATION_PLACEMENT_SEED = 2018


def centre(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) uint8 digits -> (N, 1, 40, 40), centred with a 6 px black border.

    Also affNIST's `just_centered` version ("adding an edge of 6 background pixels").
    """
    return torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))


def placement_offsets(count: int, seed: int) -> Tensor:
    """(count, 2) int64 (dy, dx) shifts in [-MAX_SHIFT, MAX_SHIFT], drawn on the CPU from `seed`.

    Offset k depends only on `seed` and k's position, so a subset of a placed split keeps the
    placements its images had in the whole split.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (count, 2), generator=generator)


def place(images: Tensor, offsets: Tensor) -> Tensor:
    """(N, 1, 28, 28) uint8 digits, each centred then moved by `offsets` (N, 2) (dy, dx) px with
    zero fill: (N, 1, 40, 40) uint8. A shift of at most `MAX_SHIFT` loses no digit pixel."""
    canvas = centre(images)  # (N, 1, 40, 40)
    n = canvas.shape[0]
    rows = torch.arange(CANVAS).expand(n, CANVAS) - offsets[:, :1]  # (N, 40) source rows
    cols = torch.arange(CANVAS).expand(n, CANVAS) - offsets[:, 1:]  # (N, 40) source cols
    inside = ((rows >= 0) & (rows < CANVAS))[:, :, None] & ((cols >= 0) & (cols < CANVAS))[:, None]
    rows, cols = rows.clamp(0, CANVAS - 1), cols.clamp(0, CANVAS - 1)
    batch = torch.arange(n)[:, None, None]
    moved = canvas[batch, 0, rows[:, :, None], cols[:, None, :]]  # (N, 40, 40)
    return moved.masked_fill(~inside, 0).unsqueeze(1)


def expanded_test(digits: Tensor) -> Tensor:
    """The expanded-MNIST test images: all MNIST test digits (N, 1, 28, 28), each placed once at
    a shift drawn from `EXPANDED_TEST_SEED` -> (N, 1, 40, 40) uint8."""
    return place(digits, placement_offsets(digits.shape[0], EXPANDED_TEST_SEED))
