"""Margin loss (Eq. 4) and the scaled reconstruction loss of Sabour et al. (2017)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from capsroute.config import ModelConfig


def margin_loss(
    lengths: Tensor, labels: Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5
) -> Tensor:
    """L_k = T_k max(0, m+ - |v_k|)^2 + λ (1 - T_k) max(0, |v_k| - m-)^2, summed over the
    classes k and averaged over the batch. lengths: (B, K); labels: (B,) class indices, or
    (B, T) for images with several digits (MultiMNIST): T_k = 1 for each of them."""
    targets = class_targets(labels, lengths.shape[1]).to(lengths.dtype)
    present = targets * torch.relu(m_plus - lengths) ** 2
    absent = lam * (1.0 - targets) * torch.relu(lengths - m_minus) ** 2
    return (present + absent).sum(dim=1).mean()


def margin_scale(form: str, num_classes: int) -> float:
    """The factor on Eq. 4's margin loss: 1 for the paper; 1 / (2 K) for the official code, whose
    `_margin_loss` halves every term and `tf.reduce_mean` averages over the K classes as well as
    the batch (1/20 for 10 classes), which weights the reconstruction term 20x more."""
    return 1.0 if form == "paper" else 1.0 / (2 * num_classes)


def class_targets(labels: Tensor, num_classes: int) -> Tensor:
    """T (B, K) bool: T_k is set for each class present, from labels (B,) or (B, T)."""
    one_hot = torch.nn.functional.one_hot(labels, num_classes)  # (B, K) or (B, T, K)
    return (one_hot if labels.dim() == 1 else one_hot.amax(dim=1)).bool()


def reconstruction_loss(reconstruction: Tensor, targets: Tensor) -> Tensor:
    """Sum of squared pixel differences per image, averaged over the batch (unscaled).

    reconstruction (B, P) against images (B, C, H, W); or, one reconstruction per digit
    (MultiMNIST), (B, T, P) against each digit alone (B, T, C, H, W), summed over the digits.
    """
    diff = reconstruction.float() - targets.reshape(reconstruction.shape).float()
    return (diff * diff).flatten(1).sum(dim=1).mean()


@dataclass
class LossParts:
    """total = margin + recon_weight * reconstruction; `reconstruction` is the unscaled sum of
    squares (None without a decoder)."""

    total: Tensor
    margin: Tensor
    reconstruction: Tensor | None


def capsule_loss(
    lengths: Tensor,
    reconstruction: Tensor | None,
    recon_target: Tensor,
    labels: Tensor,
    cfg: ModelConfig,
) -> LossParts:
    """The training objective of the paper: margin loss plus 0.0005 x reconstruction loss.

    `recon_target` is what the decoder reconstructs: the images, or (MultiMNIST) each digit
    alone, `data.Batch.recon_target`. `cfg.loss_form="official"` scales the margin loss as the
    official code's `_margin_loss` does (`margin_scale`); the reconstruction term is the same.
    """
    margin = margin_loss(lengths, labels, cfg.m_plus, cfg.m_minus, cfg.lambda_neg)
    margin = margin * margin_scale(cfg.loss_form, lengths.shape[1])
    if reconstruction is None:
        return LossParts(margin, margin, None)
    recon = reconstruction_loss(reconstruction, recon_target)
    return LossParts(margin + cfg.recon_weight * recon, margin, recon)
