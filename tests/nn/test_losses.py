"""Margin and reconstruction losses on hand-computed examples."""

from __future__ import annotations

import torch

from capsroute.config import ModelConfig
from capsroute.nn.losses import capsule_loss, margin_loss, reconstruction_loss


def test_margin_loss_hand_computed() -> None:
    # Example 1, label 0: present 0.5 -> (0.9-0.5)^2 = 0.16; absent 0.3 -> 0.5*(0.3-0.1)^2 =
    # 0.02; absent 0.05 -> 0.  Example 2, label 2: present 0.95 -> 0; absent 0.2 -> 0.005,
    # absent 0.6 -> 0.125.  Mean of 0.18 and 0.13 = 0.155.
    lengths = torch.tensor([[0.5, 0.3, 0.05], [0.6, 0.2, 0.95]])
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(margin_loss(lengths, labels), torch.tensor(0.155))


def test_margin_loss_is_zero_for_confident_correct_predictions() -> None:
    lengths = torch.tensor([[0.95, 0.05, 0.0]])
    assert margin_loss(lengths, torch.tensor([0])).item() == 0.0


def test_reconstruction_loss_sums_pixels_and_averages_images() -> None:
    images = torch.zeros(2, 1, 2, 2)
    recon = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # (0.25 + 0.25) and 1.0 -> mean 0.75
    torch.testing.assert_close(reconstruction_loss(recon, images), torch.tensor(0.75))


def test_total_loss_scales_reconstruction_by_0_0005() -> None:
    lengths = torch.tensor([[0.5, 0.3, 0.05]])
    labels = torch.tensor([0])
    images = torch.zeros(1, 1, 2, 2)
    recon = torch.ones(1, 4)
    parts = capsule_loss(lengths, recon, images, labels, ModelConfig())
    assert parts.reconstruction is not None
    torch.testing.assert_close(parts.reconstruction, torch.tensor(4.0))
    torch.testing.assert_close(parts.total, parts.margin + 0.0005 * 4.0)
    without = capsule_loss(lengths, None, images, labels, ModelConfig())
    assert without.reconstruction is None
    torch.testing.assert_close(without.total, without.margin)


def test_two_target_margin_loss_counts_both_digits_as_present() -> None:
    # labels {0, 2}: present 0.5 -> 0.16, present 0.95 -> 0; absent 0.3 -> 0.5*(0.2)^2 = 0.02
    lengths = torch.tensor([[0.5, 0.3, 0.95]])
    torch.testing.assert_close(margin_loss(lengths, torch.tensor([[0, 2]])), torch.tensor(0.18))
    torch.testing.assert_close(margin_loss(lengths, torch.tensor([[2, 0]])), torch.tensor(0.18))


def test_per_digit_reconstruction_loss_sums_both_digits() -> None:
    """MultiMNIST: each digit's reconstruction (B, 2, P) against that digit alone."""
    parts = torch.zeros(1, 2, 1, 2, 2)
    parts[0, 1] = 1.0
    recon = torch.tensor([[[0.5, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]])
    # digit 1: 0.25; digit 2: (1 - 0)^2 once -> 1.0; together 1.25
    torch.testing.assert_close(reconstruction_loss(recon, parts), torch.tensor(1.25))
