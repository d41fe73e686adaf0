"""The paper's baseline CNN (Sabour et al. 2017, Section 5), trained by the same loop as CapsNet.

"The baseline is a standard CNN with three convolutional layers of 256, 256, 128 channels.
Each has 5x5 kernels and stride of 1. The last convolutional layers are followed by two fully
connected layers of size 328, 192. The last fully connected layer is connected with dropout to
a 10 class softmax layer with cross entropy loss." With 'same' padding and no pooling that is
35,445,522 parameters on MNIST, the paper's 35.4M (tested).

The network answers the same call as `CapsNet` (images, labels, iterations, diagnostics,
reconstruct; the routing arguments are accepted and ignored) and returns a `BaselineOutput`
that, like the CapsNet's output, carries its class `scores` and its own training objective
(`loss`), so the training loop and the evaluation need no per-model branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from capsroute.config import ModelConfig
from capsroute.nn.losses import LossParts
from capsroute.nn.standardize import standardize_images

PAPER_CHANNELS = (256, 256, 128)
PAPER_KERNEL = 5
PAPER_HIDDEN = (328, 192)
PAPER_DROPOUT = 0.5  # the paper gives none; the official code's baseline keeps 50%


@dataclass
class BaselineOutput:
    """scores: (B, K) logits (argmax = prediction); no reconstruction and no routing."""

    scores: Tensor
    reconstruction: None = None
    routing: None = None

    def loss(self, images: Tensor, labels: Tensor, cfg: ModelConfig | None = None) -> LossParts:
        """Softmax cross-entropy averaged over the batch (images are unused: no decoder).

        Reported as both `total` and `margin` (the classification part), so the metrics
        files keep their columns; `reconstruction` is None as for a CapsNet without decoder.
        """
        ce = nn.functional.cross_entropy(self.scores.float(), labels)
        return LossParts(ce, ce, None)


class BaselineCNN(nn.Module):
    """conv 5x5 'same' (ReLU) x3 -> FC 328 (ReLU) -> FC 192 (ReLU) -> dropout -> FC K.

    (B, C, H, W) -> (B, K) logits. Every size is an argument; the defaults are the paper's.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = PAPER_CHANNELS,
        kernel: int = PAPER_KERNEL,
        hidden: Sequence[int] = PAPER_HIDDEN,
        dropout: float = PAPER_DROPOUT,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.standardize = standardize  # per-image standardisation first (model.standardize)
        in_channels, height, width = input_shape
        self.input_shape, self.num_classes = input_shape, num_classes
        convs: list[nn.Module] = []
        for out_channels in channels:
            convs += [
                nn.Conv2d(in_channels, out_channels, kernel, stride=1, padding="same"),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*convs)  # (B, C, H, W) -> (B, channels[-1], H, W)
        layers: list[nn.Module] = []
        width_in = in_channels * height * width  # 'same' padding keeps H x W
        for size in hidden:
            layers += [nn.Linear(width_in, size), nn.ReLU(inplace=True)]
            width_in = size
        layers += [nn.Dropout(dropout), nn.Linear(width_in, num_classes)]
        self.classifier = nn.Sequential(*layers)
        # No decoder: code that asks for one (metrics, pictures) sees None, as for a CapsNet
        # trained with model.reconstruction=false.
        self.decoder: nn.Module | None = None

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        iterations: int | None = None,
        diagnostics: bool = False,
        reconstruct: bool = True,
    ) -> BaselineOutput:
        """images (B, C, H, W) -> logits (B, K); the other arguments exist for the shared call."""
        inputs = standardize_images(images) if self.standardize else images
        features = self.features(inputs)  # (B, 128, H, W)
        return BaselineOutput(self.classifier(features.flatten(1)))

    def parameter_counts(self) -> dict[str, int]:
        """Total trainable parameters (no decoder, so `without_decoder` is the same number)."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "without_decoder": total}


def paper_parameter_count(input_shape: tuple[int, int, int], num_classes: int = 10) -> int:
    """The parameter count of the paper's baseline, from the layer sizes alone (for tests)."""
    channels, height, width = input_shape
    count, previous = 0, channels
    for out in PAPER_CHANNELS:
        count += previous * out * PAPER_KERNEL**2 + out
        previous = out
    previous = previous * height * width
    for out in (*PAPER_HIDDEN, num_classes):
        count += previous * out + out
        previous = out
    return count
