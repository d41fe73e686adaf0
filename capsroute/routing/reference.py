"""Dynamic routing between capsules (Sabour et al. 2017, Procedure 1) and the squash non-linearity.

For every example, lower capsule i and parent capsule j, the logits b_ij start at 0; then r times:

    c_i = softmax_j(b_i);  s_j = sum_i c_ij û_j|i;  v_j = squash(s_j);  b_ij += û_j|i · v_j

With `leaky` (the official code's leaky routing) a constant logit 0 joins every softmax over
parents and its column is dropped: c_ij = e^b_ij / (1 + sum_k e^b_ik), so sum_j c_ij < 1 and
the leaked share of û is routed nowhere. Its Jacobian over the real logits has the softmax's
form, ∂c_ij/∂b_ik = c_ij (δ_jk - c_ik), so the backward pass below serves both.

The routing controls of `routing.mode` are this same function with r = 1: `uniform` is exactly
Procedure 1 with one iteration (every c_ij = 1/N_out), and `random` starts from given random
logits instead of 0 (`init_logits`, constants), so c_i = softmax_j(random b_i) and no agreement
step follows.

The work is dominated by passes over the prediction tensor û (B, N_in, N_out, D), which is large
(B x 1152 x 10 x 16 for MNIST). The routing therefore runs as one autograd function that holds û
in the layout (B, N_out, N_in, D), so that every reduction over i is a batched matrix-vector
product that reads û once and writes nothing of its size. Its backward pass follows the chain
rule through every iteration in closed form and writes the gradient of û once, as a single
product of (B, N_out, N_in, 2r-1) coefficients with (B, N_out, 2r-1, D) vectors, instead of
autograd's several full-size temporaries per iteration; CUDA runs it on the whole batch.

This module is the whole-batch torch routing, which CUDA runs. On the CPU,
`capsroute.routing.cpu` routes float32 û by a small C kernel compiled on first use, one example
at a time while its û is in the cache, or, without a C compiler, runs this module's torch
routing in cache-sized blocks of examples.

Tests check values and gradients against a plain autograd implementation of Procedure 1, and
the CPU paths against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SQUASH_EPS = 1e-12
POLARISED = 0.9  # a lower capsule is "polarised" when its strongest coupling exceeds this


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """squash(s) = |s|^2 / (1 + |s|^2) * s / |s|, along `dim`.

    The epsilon sits inside the square root of the norm only, so squash(0) = 0 exactly and its
    gradient at 0 is finite (zero), while any s with |s|^2 >> 1e-12 is squashed exactly.
    """
    return s * squash_scale(s, dim)


def squash_scale(s: Tensor, dim: int = -1) -> Tensor:
    """squash(s) = s * squash_scale(s)."""
    squared_norm = (s * s).sum(dim=dim, keepdim=True)
    return squared_norm / (1.0 + squared_norm) / torch.sqrt(squared_norm + SQUASH_EPS)


@dataclass
class RoutingResult:
    """Output of `dynamic_routing`.

    v: parent capsules after the last iteration, (B, N_out, D).
    c: coupling coefficients used for that final v, (B, N_in, N_out).
    delta_b, entropy, max_c, polarised: per-iteration diagnostics, each (r,), or None when not
        requested: mean |Δb_ij| added by iteration k (the paper's appendix figure), mean entropy
        of c_i (nats), mean max_j c_ij, and the fraction of lower capsules i with
        max_j c_ij > 0.9 (`POLARISED`), of the coefficients used in iteration k, averaged over
        the batch and all (i, j) or i.
    lengths: |v_j| after every iteration, (r, B, N_out), or None when not requested; the
        class a network would predict had it stopped routing after iteration k.
    """

    v: Tensor
    c: Tensor
    delta_b: Tensor | None = None
    entropy: Tensor | None = None
    max_c: Tensor | None = None
    polarised: Tensor | None = None
    lengths: Tensor | None = None


def accumulation_dtype(u: Tensor) -> torch.dtype:
    """float32 for half-precision û, û's own dtype otherwise (float64 in gradchecks)."""
    return torch.promote_types(u.dtype, torch.float32)


def weighted_sum(weights: Tensor, u: Tensor) -> Tensor:
    """sum_i w[b, j, i] * u[b, j, i, :]: (B, J, I) x (B, J, I, D) -> (B, J, D)."""
    product = torch.matmul(weights.to(u.dtype).unsqueeze(2), u).squeeze(2)
    return product.to(accumulation_dtype(u))


def agreement(u: Tensor, vectors: Tensor) -> Tensor:
    """u[b, j, i, :] · x[b, j, :]: (B, J, I, D) x (B, J, D) -> (B, J, I).

    Written as the row vector x times uᵀ, (1, D) x (D, I) per (b, j): on oneDNN/MKL CPUs that
    runs ~2-3x faster than the equivalent u x (D, 1) product (one read of u either way).
    """
    product = torch.matmul(vectors.to(u.dtype).unsqueeze(2), u.transpose(-1, -2)).squeeze(2)
    return product.to(accumulation_dtype(u))


def coupling_stats(c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean entropy over parents, mean max coupling, and the fraction of lower capsules whose
    max coupling exceeds `POLARISED`, of c (B, J, I); all scalars."""
    entropy = -(c * torch.log(c.clamp_min(1e-30))).sum(dim=1).mean()
    strongest = c.amax(dim=1)  # (B, I)
    return entropy, strongest.mean(), (strongest > POLARISED).to(c.dtype).mean()


def couple(logits: Tensor, leaky: bool, out: Tensor | None = None) -> Tensor:
    """Coupling coefficients from logits (B, J, I): softmax over the parents j (dim 1), or with
    `leaky` the softmax over [0, b_1i .. b_Ji] without its first (leak) column."""
    if not leaky:
        return torch.softmax(logits, dim=1, out=out) if out is not None else logits.softmax(1)
    top = logits.amax(dim=1, keepdim=True).clamp_min(0.0)  # (B, 1, I): max(0, max_j b_ji)
    exp = torch.exp(logits - top)  # (B, J, I)
    c = exp / (torch.exp(-top) + exp.sum(dim=1, keepdim=True))
    return c if out is None else out.copy_(c)


def route(
    u: Tensor,
    bias: Tensor,
    iterations: int,
    diagnostics: bool,
    logits: Tensor | None,
    out: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None,
    leaky: bool = False,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[tuple[Tensor, ...]]]:
    """Procedure 1 on û laid out as (B, J, I, D), contiguous, from logits (B, J, I) or zeros.

    Returns, per iteration, the coupling coefficients c (B, J, I), s (B, J, D) and v (B, J, D),
    and (with `diagnostics`, else empty) the means over these examples of |Δb|, the entropy
    of c, max_j c and the polarised fraction. `out`, if given, holds the r tensors each of c,
    s and v to write into (views of whole-batch tensors), so they need no copy afterwards.
    `leaky`: the official code's leaky couplings (`couple`).
    """
    batch, n_out, n_in, _ = u.shape
    acc_dtype = accumulation_dtype(u)
    if logits is None:  # b_ij, (B, J, I): 0 (Procedure 1) or given constants
        logits = u.new_zeros((batch, n_out, n_in), dtype=acc_dtype)
    couplings: list[Tensor] = []
    pre_squash: list[Tensor] = []
    outputs: list[Tensor] = []
    stats: list[tuple[Tensor, ...]] = []
    for k in range(iterations):
        if out is None:
            c = couple(logits, leaky)  # over parents j, (B, J, I)
            s = weighted_sum(c, u) + bias  # (B, J, D)
            v = squash(s)
        else:
            c = couple(logits, leaky, out=out[0][k])
            s = torch.add(weighted_sum(c, u), bias, out=out[1][k])
            v = torch.mul(s, squash_scale(s), out=out[2][k])
        couplings.append(c)
        pre_squash.append(s)
        outputs.append(v)
        last = k == iterations - 1
        if diagnostics or not last:
            update = agreement(u, v)  # û_j|i · v_j, (B, J, I)
            if diagnostics:
                stats.append((update.abs().mean(), *coupling_stats(c)))
            if not last:
                logits = logits + update if k == 0 else logits.add_(update)
    return couplings, pre_squash, outputs, stats


def route_backward(
    u: Tensor,
    couplings: list[Tensor],
    pre_squash: list[Tensor],
    outputs: list[Tensor],
    grad_v: Tensor,
    through_all: bool,
    out: Tensor | None = None,
    squash_grad: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of û (B, J, I, D), in û's dtype, and of the bias (J, D), summed over the
    batch, of the routing `route` ran on u, given ∂L/∂v of its last iteration.

    The gradient of û is written into `out` (any strides) if given. `squash_grad` defaults
    to autograd through `squash`.
    """
    r = len(couplings)
    acc_dtype = accumulation_dtype(u)
    squash_grad = squash_grad or squash_backward
    # grad û = sum over iterations of c_k ⊗ ∂L/∂s_k plus (∂L/∂b_k) ⊗ v_k: collect the
    # (B, J, I) coefficients and (B, J, D) vectors and contract them in one product.
    coefficients: list[Tensor] = []
    vectors: list[Tensor] = []
    grad_bias = torch.zeros_like(grad_v[0], dtype=acc_dtype)  # (J, D)
    grad_logits: Tensor | None = None  # ∂L/∂b after iteration k, (B, J, I)
    first = 0 if through_all else r - 1
    for k in range(r - 1, first - 1, -1):
        grad_out = grad_v.to(acc_dtype)
        if grad_logits is not None:  # b_k = b_{k-1} + û · v_k
            grad_out = weighted_sum(grad_logits, u)
            coefficients.append(grad_logits)
            vectors.append(outputs[k])
        grad_s = squash_grad(pre_squash[k], grad_out)
        grad_bias = grad_bias + grad_s.sum(dim=0)
        coefficients.append(couplings[k])
        vectors.append(grad_s)
        if k > first:  # c_k = softmax_j(b_{k-1}) (leaky or not); b_{-1} is a constant
            c = couplings[k]
            grad_c = agreement(u, grad_s)
            grad_b = c * (grad_c - (c * grad_c).sum(dim=1, keepdim=True))
            grad_logits = grad_b if grad_logits is None else grad_logits + grad_b
    # (B, J, I, M) as the transpose of a (B, J, M, I) stack: contiguous writes, and the matrix
    # product reads it transposed at no cost (a strided stack along the last dim is slower)
    coeff = torch.stack(coefficients, dim=2).to(u.dtype).transpose(-1, -2)
    vecs = torch.stack(vectors, dim=2).to(u.dtype)  # (B, J, M, D)
    grad_u = torch.matmul(coeff, vecs)  # (B, J, I, D)
    if out is None:
        return grad_u, grad_bias
    # (bmm into a strided `out` directly takes a slow per-matrix path on the CPU)
    return out.copy_(grad_u), grad_bias


def bias_gradient(ctx: Any, grad_bias: Tensor) -> Tensor | None:
    if ctx.needs_input_grad[1] and len(ctx.bias_shape) > 0:
        return grad_bias.to(ctx.bias_dtype).reshape(ctx.bias_shape)
    return None


class WholeBatchRouting(torch.autograd.Function):
    """Procedure 1 on û laid out as (B, J, I, D), with a closed-form backward pass.

    Logits, coupling coefficients and squash run in at least float32 whatever û's dtype
    (bf16/fp16 under autocast): they are small, and the softmax is sensitive to precision.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        bias: Tensor,
        iterations: int,
        through_all: bool,
        diagnostics: bool,
        init_logits: Tensor | None = None,
        leaky: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        with torch.autocast(u.device.type, enabled=False):
            acc_dtype = accumulation_dtype(u)
            couplings, pre_squash, outputs, stats = route(
                u, bias, iterations, diagnostics, init_logits, leaky=leaky
            )
            delta_b, entropy, max_c, polarised = (
                torch.zeros(iterations, dtype=acc_dtype, device=u.device) for _ in range(4)
            )
            for k, values in enumerate(stats):
                delta_b[k], entropy[k], max_c[k], polarised[k] = values
        ctx.through_all = through_all
        ctx.bias_shape, ctx.bias_dtype = bias.shape, bias.dtype
        ctx.save_for_backward(u, *couplings, *pre_squash, *outputs)
        ctx.iterations = iterations
        c_final, v = couplings[-1], outputs[-1]
        # |v_j| after each iteration, (r, B, J): which class each iteration would predict
        lengths = (
            torch.stack([out.norm(dim=-1) for out in outputs])
            if diagnostics
            else u.new_zeros((), dtype=acc_dtype)
        )
        ctx.mark_non_differentiable(c_final, delta_b, entropy, max_c, polarised, lengths)
        return v.to(u.dtype), c_final, delta_b, entropy, max_c, polarised, lengths

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_v: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None]:
        r = ctx.iterations
        u, *rest = ctx.saved_tensors
        couplings, pre_squash, outputs = rest[:r], rest[r : 2 * r], rest[2 * r :]
        with torch.autocast(u.device.type, enabled=False):
            grad_u, grad_bias = route_backward(
                u, couplings, pre_squash, outputs, grad_v, ctx.through_all
            )
        return grad_u, bias_gradient(ctx, grad_bias), None, None, None, None, None


def squash_backward_closed_form(s: Tensor, grad_v: Tensor) -> Tensor:
    """`squash_backward` without autograd (per block, autograd's bookkeeping costs more than
    the arithmetic): v = f(n) s with n = |s|^2, so ∂L/∂s = f(n) g + 2 f'(n) (g · s) s, where
    f = n / ((1 + n) q), q = sqrt(n + eps) and f' = 1 / ((1 + n)^2 q) - n / (2 (1 + n) q^3).
    """
    n = (s * s).sum(dim=-1, keepdim=True)
    q = torch.sqrt(n + SQUASH_EPS)
    one_n = 1.0 + n
    f = n / (one_n * q)
    df = 1.0 / (one_n * one_n * q) - n / (2.0 * one_n * q * q * q)
    return f * grad_v + (2.0 * df * (grad_v * s).sum(dim=-1, keepdim=True)) * s


def squash_backward(s: Tensor, grad_v: Tensor) -> Tensor:
    """∂L/∂s given ∂L/∂v for v = squash(s), on the small (B, J, D) tensors."""
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        (grad_s,) = torch.autograd.grad(squash(s), s, grad_v)
    return grad_s
