"""CapsNet (Sabour, Frosst & Hinton 2017, Section 4): Conv1 -> PrimaryCaps -> DigitCaps -> decoder.

Reads top to bottom: the layers, then the network that chains them. Every size comes from
`ModelConfig`; the input shape and the number of classes come from the dataset. Routing is
`capsroute.routing.dynamic_routing`; the number of iterations can be changed per call, so one
trained network can be evaluated at any r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from capsroute.config import ModelConfig, RoutingConfig, iterations_allowed
from capsroute.nn.losses import LossParts, capsule_loss
from capsroute.nn.official import official_init, output_size, pad_input
from capsroute.nn.standardize import standardize_images
from capsroute.routing import RoutingResult, dynamic_routing, squash


class _ConvDilatedWeightGrad(torch.autograd.Function):
    """A bias-ful, unpadded, strided conv2d whose weight gradient is a dilated convolution.

    ∂L/∂W[o, c, p, q] = sum_{b, y, x} g[b, o, y, x] x[b, c, s y + p, s x + q] is itself a
    convolution of the input (channels and batch swapped) with the output gradient as kernel,
    dilated by the stride s. oneDNN runs that form ~2x faster on the CPU than its own weight
    backward for the 9x9 stride-2 PrimaryCaps conv, which is most of the CapsNet's FLOPs. The
    input gradient is ATen's own. Same values up to float summation order.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return nn.functional.conv2d(x, weight, bias, stride=stride)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors  # (B, C, H, W), (O, C, k, k)
        stride, kernel = ctx.stride, weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [stride] * 2, [0, 0], [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            used_h = (grad_out.shape[2] - 1) * stride + kernel  # rows the conv reads
            used_w = (grad_out.shape[3] - 1) * stride + kernel
            grad_w = nn.functional.conv2d(
                x[:, :, :used_h, :used_w].transpose(0, 1),  # (C, B, h, w)
                grad_out.transpose(0, 1),  # (O, B, H', W') as the kernel
                dilation=stride,
            )  # (C, O, k, k)
            grad_w = grad_w.transpose(0, 1).contiguous()  # (O, C, k, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def conv2d_fast_weight_grad(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """`conv2d(x, weight, bias, stride)` (no padding) with the dilated-conv weight gradient."""
    return _ConvDilatedWeightGrad.apply(x, weight, bias, stride)


def _use_fast_weight_grad(x: Tensor) -> bool:
    """The dilated-conv weight gradient pays off for float32 on the CPU (oneDNN); CUDA's cuDNN
    and autocast's bf16/fp16 convolutions keep PyTorch's own backward."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    )


class PrimaryCaps(nn.Module):
    """A convolution whose channels are grouped into `types` capsules of `dim` units each.

    (B, C_in, H, W) -> (B, types * H' * W', dim), squashed. Channel `t * dim + d` is unit d of
    capsule type t, as in the official code. `padding` 'same' pads the input as TensorFlow's
    'SAME' does (uneven). `routed_over` = T, when given, is the official `conv_slim_capsule`:
    one routing pass over the types from zero logits couples each with 1/T (T = types, or
    types + 1 with the leak), so u = squash(conv(x) / T + b), with a bias-free convolution and
    b per (type, unit) added after the scaling. Same parameter count either way.
    """

    def __init__(
        self,
        in_channels: int,
        types: int,
        dim: int,
        kernel: int,
        stride: int,
        padding: str = "valid",
        routed_over: int | None = None,
    ) -> None:
        super().__init__()
        self.types, self.dim, self.padding = types, dim, padding
        self.routed_over = routed_over
        self.conv = nn.Conv2d(
            in_channels, types * dim, kernel_size=kernel, stride=stride, bias=routed_over is None
        )
        self.bias: nn.Parameter | None = None
        if routed_over is not None:  # as the conv's own bias would be initialised
            bound = 1 / math.sqrt(in_channels * kernel * kernel)
            self.bias = nn.Parameter(torch.empty(types * dim).uniform_(-bound, bound))

    def convolve(self, x: Tensor) -> Tensor:
        """The convolution alone, (B, C_in, H, W) -> (B, types * dim, H', W'): the CapsNet's
        dominant cost, timed on its own by `capsroute bench` as the machine's ceiling."""
        conv = self.conv
        if _use_fast_weight_grad(x) and conv.weight.requires_grad and torch.is_grad_enabled():
            return conv2d_fast_weight_grad(x, conv.weight, conv.bias, conv.stride[0])
        return conv(x)

    def forward(self, x: Tensor) -> Tensor:
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        x = pad_input(x, kernel, stride, self.padding)  # no copy for 'valid'
        out = self.convolve(x)  # (B, types * dim, H', W')
        if self.bias is not None and self.routed_over is not None:
            out = out / self.routed_over + self.bias[:, None, None]
        batch, _, height, width = out.shape
        out = out.view(batch, self.types, self.dim, height, width)
        out = out.permute(0, 1, 3, 4, 2).reshape(batch, -1, self.dim)  # (B, N_in, dim)
        return squash(out)


class DigitCaps(nn.Module):
    """Fully connected capsule layer: a separate W_ij (in_dim x out_dim) for every pair (i, j).

    Predictions û_j|i = W_ij u_i are routed to the `n_out` parents by dynamic routing. The
    optional bias is added to s_j in every routing iteration, as the official code does; the
    paper's text has none. `routing.mode` picks Procedure 1 (`dynamic`) or a control without
    agreement: `uniform` (r = 1, every c_ij = 1/n_out) or `random` (r = 1 from logits drawn
    per example from N(0, 1) / `routing.temperature`). Random logits come from this layer's
    own CPU generator (`reseed`), so runs are reproducible on any device: training reseeds it
    every epoch from (seed, epoch), evaluation from a fixed seed at its start.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        in_dim: int,
        out_dim: int,
        bias: bool,
        weight_std: float,
        routing: RoutingConfig,
    ) -> None:
        super().__init__()
        self.n_in, self.n_out, self.in_dim, self.out_dim = n_in, n_out, in_dim, out_dim
        self.routing = routing
        # (N_in, in_dim, N_out * out_dim): one bmm over i computes every prediction
        self.weight = nn.Parameter(torch.empty(n_in, in_dim, n_out * out_dim))
        self.bias = nn.Parameter(torch.zeros(n_out, out_dim)) if bias else None
        nn.init.trunc_normal_(self.weight, std=weight_std, a=-2 * weight_std, b=2 * weight_std)
        self.generator: torch.Generator | None = None  # random couplings (routing.mode=random)
        self.leaky = routing.leaky

    def reseed(self, seed: int) -> None:
        """Restart the stream of random couplings (`routing.mode=random`) from `seed`."""
        self.generator = torch.Generator().manual_seed(seed)

    def initial_logits(self, batch: int, iterations: int, device: torch.device) -> Tensor | None:
        """The logits routing starts from: None (zeros) for `dynamic` and `uniform`, fresh
        N(0, 1) / temperature draws (B, N_in, N_out) for `random`. The controls have no
        agreement step, so they accept r = 1 only."""
        mode = self.routing.mode
        if mode == "dynamic":
            return None
        if not iterations_allowed(mode, iterations):
            raise ValueError(f"routing.mode={mode} routes with r = 1 only, got r = {iterations}")
        if mode == "uniform":
            return None
        if self.generator is None:
            self.reseed(0)
        logits = torch.randn((batch, self.n_in, self.n_out), generator=self.generator)
        return (logits / self.routing.temperature).to(device)  # drawn on the CPU, then moved

    def predictions(self, u: Tensor) -> Tensor:
        """û_j|i = W_ij u_i: (B, N_in, in_dim) -> (B, N_in, N_out, out_dim)."""
        batch = u.shape[0]
        u_hat = torch.bmm(u.transpose(0, 1), self.weight)  # (N_in, B, N_out * out_dim)
        u_hat = u_hat.view(self.n_in, batch, self.n_out, self.out_dim)
        return u_hat.permute(1, 0, 2, 3)  # (B, N_in, N_out, out_dim), a view

    def forward(
        self, u: Tensor, iterations: int | None = None, diagnostics: bool = False
    ) -> RoutingResult:
        r = self.routing.iterations if iterations is None else iterations
        init = self.initial_logits(u.shape[0], r, u.device)  # (B, N_in, N_out) or None
        if u.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU batched mat-vecs are slower in bf16 than in fp32 (memory-bound either way,
            # no bf16 kernel for them): predict and route in fp32 under CPU autocast.
            with torch.autocast("cpu", enabled=False):
                u_hat = self.predictions(u.float())  # (B, N_in, N_out, out_dim) fp32
                return dynamic_routing(
                    u_hat, r, self.routing.grad, diagnostics, self.bias, init, leaky=self.leaky
                )
        return dynamic_routing(
            self.predictions(u),
            r,
            self.routing.grad,
            diagnostics,
            self.bias,
            init,
            leaky=self.leaky,
        )


def predicted_classes(scores: Tensor, targets: int = 1) -> Tensor:
    """The prediction from class scores (B, K): the argmax (B,), or for images that hold
    `targets` > 1 classes (MultiMNIST) the `targets` highest, (B, T), best first."""
    if targets == 1:
        return scores.argmax(dim=1)
    return scores.topk(targets, dim=1).indices


def correct_predictions(scores: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: the prediction is right. labels (B,): the argmax is the label; labels (B, T)
    (MultiMNIST, T = 2): every label is among the T highest scores, the paper's accuracy."""
    if labels.dim() == 1:
        return scores.argmax(dim=1) == labels
    top = predicted_classes(scores, labels.shape[1])  # (B, T)
    return (top[:, :, None] == labels[:, None, :]).any(dim=1).all(dim=1)


def reseed_routing(model: nn.Module, seed: int) -> None:
    """Restart a network's random-coupling stream (`routing.mode=random`) from `seed`; a
    network without capsule routing has none, and is left alone."""
    digit = getattr(model, "digit", None)
    if isinstance(digit, DigitCaps):
        digit.reseed(seed)


class Decoder(nn.Module):
    """Reconstructs the input from the class capsules, all but one masked to zero.

    (B, K, D) capsules and (B,) class indices -> (B, C * H * W) pixels in [0, 1].
    """

    def __init__(self, num_classes: int, capsule_dim: int, hidden: list[int], out_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_classes * capsule_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        layers += [nn.Linear(width, out_size), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, capsules: Tensor, classes: Tensor) -> Tensor:
        """classes (B,) -> (B, P); classes (B, T) -> (B, T, P), each class decoded on its own
        (MultiMNIST reconstructs each of its two digits from that digit's capsule alone)."""
        if classes.dim() == 2:
            return torch.stack([self(capsules, column) for column in classes.unbind(1)], dim=1)
        mask = nn.functional.one_hot(classes, capsules.shape[1]).to(capsules.dtype)  # (B, K)
        return self.net((capsules * mask.unsqueeze(-1)).flatten(1))


@dataclass
class CapsNetOutput:
    """lengths: (B, K) class-capsule lengths (the class scores); capsules: (B, K, D);
    reconstruction: (B, C*H*W), (B, T, C*H*W) for T digits per image, or None; routing: the
    routing result, diagnostics included when asked for."""

    lengths: Tensor
    capsules: Tensor
    reconstruction: Tensor | None
    routing: RoutingResult

    @property
    def scores(self) -> Tensor:
        """Class scores (B, K), argmax = prediction: the capsule lengths. Every network's
        output has `scores` and `loss`, so training and evaluation need no per-model code."""
        return self.lengths

    def loss(self, recon_target: Tensor, labels: Tensor, cfg: ModelConfig) -> LossParts:
        """The CapsNet objective: margin loss + recon_weight x reconstruction loss of
        `recon_target` (the images, or each MultiMNIST digit alone: `Batch.recon_target`)."""
        return capsule_loss(self.lengths, self.reconstruction, recon_target, labels, cfg)


class CapsNet(nn.Module):
    """The network of Section 4: Conv1 (ReLU) -> PrimaryCaps -> DigitCaps -> optional decoder."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        model: ModelConfig,
        routing: RoutingConfig,
        targets: int = 1,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.input_shape, self.num_classes = input_shape, num_classes
        self.targets = targets  # classes per image (MultiMNIST: 2), decoded without labels
        self.standardize = model.standardize  # per-image standardisation before conv1
        self.conv1 = nn.Conv2d(channels, model.conv1_channels, kernel_size=model.conv1_kernel)
        self.padding = model.padding
        routed_over = model.primary_types + int(routing.leaky) if model.primary_routing else None
        self.primary = PrimaryCaps(
            model.conv1_channels,
            model.primary_types,
            model.primary_dim,
            model.primary_kernel,
            model.primary_stride,
            model.padding,
            routed_over,
        )
        grid = [
            output_size(
                output_size(size, model.conv1_kernel, 1, model.padding),
                model.primary_kernel,
                model.primary_stride,
                model.padding,
            )
            for size in (height, width)
        ]
        if min(grid) < 1:
            raise ValueError(f"input {height}x{width} is too small for the convolution sizes")
        n_primary = model.primary_types * grid[0] * grid[1]
        n_parents = num_classes + int(model.none_of_the_above)
        self.digit = DigitCaps(
            n_primary,
            n_parents,
            model.primary_dim,
            model.digit_dim,
            model.digit_bias,
            model.weight_std,
            routing,
        )
        self.decoder = (
            Decoder(num_classes, model.digit_dim, model.decoder_hidden, math.prod(input_shape))
            if model.reconstruction
            else None
        )
        if model.init == "official":
            decoder = self.decoder.net if self.decoder is not None else []
            official_init(
                self.conv1,
                self.primary.conv.weight,
                [
                    b
                    for b in (self.primary.bias, self.primary.conv.bias, self.digit.bias)
                    if b is not None
                ],
                [layer for layer in decoder if isinstance(layer, nn.Linear)],
            )

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        iterations: int | None = None,
        diagnostics: bool = False,
        reconstruct: bool = True,
    ) -> CapsNetOutput:
        """images (B, C, H, W) -> class-capsule lengths, capsules and reconstruction.

        The decoder sees the capsule of `labels` when given (the loss, as in the official code)
        and of the predicted class otherwise (pictures); with labels (B, T), or `targets` > 1
        and no labels (the T longest capsules), each class is decoded on its own, giving
        (B, T, C*H*W). `iterations` overrides the configured r.
        """
        images = pad_input(images, self.conv1.kernel_size[0], 1, self.padding)
        inputs = standardize_images(images) if self.standardize else images
        features = torch.relu(self.conv1(inputs))  # (B, 256, 20, 20) for MNIST
        primary = self.primary(features)  # (B, 1152, 8) for MNIST
        routed = self.digit(primary, iterations, diagnostics)  # v: (B, n_parents, 16)
        capsules = routed.v[:, : self.num_classes]  # drop the none-of-the-above capsule
        lengths = capsules.float().norm(dim=-1)  # (B, K)
        reconstruction = None
        if self.decoder is not None and reconstruct:
            classes = labels if labels is not None else predicted_classes(lengths, self.targets)
            reconstruction = self.decoder(capsules, classes)
        return CapsNetOutput(lengths, capsules, reconstruction, routed)

    def parameter_counts(self) -> dict[str, int]:
        """Total trainable parameters and the count without the reconstruction decoder."""
        total = sum(p.numel() for p in self.parameters())
        decoder = sum(p.numel() for p in self.decoder.parameters()) if self.decoder else 0
        return {"total": total, "without_decoder": total - decoder}
