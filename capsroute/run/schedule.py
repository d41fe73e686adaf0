"""The learning-rate schedule: lr(step) = max(lr x rate^(step / steps), lr_min).

Continuous exponential decay as the official code's `tf.train.exponential_decay` (no
staircase); `train.lr_min` is its floor, `tf.maximum(learning_rate, 1e-6)` in the official
code, 0 (none) in the paper's text. With the official 1e-6 the floor is reached after
2000 x ln(1000) / ln(1 / 0.96) ~ 338,433 steps, so it shapes the last ~44% of the official
CIFAR-10 run (600k steps) and never the MNIST one (300k).
"""

from __future__ import annotations

from collections.abc import Callable

from capsroute.config import TrainConfig


def lr_multiplier(train: TrainConfig) -> Callable[[int], float]:
    """The factor on `train.lr` after `step` optimiser steps (for `LambdaLR`)."""
    floor = train.lr_min / train.lr

    def factor(step: int) -> float:
        return max(train.lr_decay_rate ** (step / train.lr_decay_steps), floor)

    return factor
