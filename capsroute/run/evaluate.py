"""Evaluation of a CapsNet on a held set: accuracy, loss parts and per-iteration routing stats."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from capsroute.config import DatasetConfig, ModelConfig
from capsroute.data.batches import eval_batches
from capsroute.data.files import ImageTensors
from capsroute.device import autocast
from capsroute.nn.capsnet import CapsNet, correct_predictions, reseed_routing

# Seed of the random couplings (routing.mode=random) at the start of every evaluation, so an
# evaluation is deterministic and `capsroute evaluate` repeats the run's own numbers.
EVAL_ROUTING_SEED = 2017


@dataclass
class EvalResult:
    """Means over the evaluated images. `routing` holds one dict per routing iteration
    (`iteration`, `delta_b`, `entropy`, `max_c`, `polarised`, `flip`) when diagnostics were
    requested; `flip` is the fraction of images whose predicted class after iteration k
    differs from the final prediction (0 at the last iteration, so always 0 with r = 1)."""

    images: int
    accuracy: float
    loss: float
    margin_loss: float
    recon_loss: float | None
    routing: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def classify(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
    iterations: int | None = None,
) -> torch.Tensor:
    """Class scores (B, K), the capsule lengths, for images (B, C, H, W): the inference path.

    No gradients and no decoder (the reconstruction is only needed for the loss), so this is
    what prediction costs; `capsroute bench` times it as the `eval` mode.
    """
    with autocast(device, precision):
        return model(images, iterations=iterations, reconstruct=False).scores


@torch.no_grad()
def evaluate(
    model: CapsNet,
    data: ImageTensors,
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    iterations: int | None = None,
    diagnostics: bool = False,
) -> EvalResult:
    """Evaluate in eval mode without augmentation, at the model's r or at `iterations`.

    Sums stay on the device and are read once at the end, so no step waits on the host.
    """
    was_training = model.training
    model.eval()
    routed = isinstance(model, CapsNet)  # networks without routing have no diagnostics
    r = iterations or (model.digit.routing.effective_iterations if routed else 1)
    diagnostics = diagnostics and routed
    reseed_routing(model, EVAL_ROUTING_SEED)  # routing.mode=random: the same draws every time
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct, loss, margin, recon
    # per iteration: delta_b, entropy, max_c, polarised (x images), changed predictions
    stats = torch.zeros(5, r, dtype=torch.float64, device=device)
    for batch in eval_batches(data, dataset, batch_size, device):
        with autocast(device, precision):
            out = model(batch.images, batch.labels, iterations=r, diagnostics=diagnostics)
            parts = out.loss(batch.recon_target, batch.labels, model_cfg)
        n = batch.labels.shape[0]
        recon = parts.reconstruction if parts.reconstruction is not None else parts.margin * 0
        totals += torch.stack(
            [
                correct_predictions(out.scores, batch.labels).sum().double(),
                parts.total.double() * n,
                parts.margin.double() * n,
                recon.double() * n,
            ]
        )
        if diagnostics:
            routed = out.routing
            assert routed.delta_b is not None and routed.entropy is not None
            assert routed.max_c is not None and routed.polarised is not None
            assert routed.lengths is not None
            batch = torch.stack([routed.delta_b, routed.entropy, routed.max_c, routed.polarised])
            predicted = routed.lengths[:, :, : model.num_classes].argmax(dim=2)  # (r, B)
            flips = (predicted != predicted[-1]).sum(dim=1)  # (r,)
            stats += torch.cat([batch.double() * n, flips.double().unsqueeze(0)])
    model.train(was_training)
    count = len(data)
    correct, loss, margin, recon = (totals / count).tolist()
    routing_rows = []
    if diagnostics:
        means = (stats / count).tolist()
        routing_rows = [
            {
                "iteration": k + 1,
                "delta_b": means[0][k],
                "entropy": means[1][k],
                "max_c": means[2][k],
                "polarised": means[3][k],
                "flip": means[4][k],
            }
            for k in range(r)
        ]
    return EvalResult(
        images=count,
        accuracy=correct,
        loss=loss,
        margin_loss=margin,
        recon_loss=recon if model.decoder is not None else None,
        routing=routing_rows,
    )
