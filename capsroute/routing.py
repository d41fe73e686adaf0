"""Dynamic routing between capsules (Sabour et al. 2017, Procedure 1) and the squash non-linearity.

For every example, lower capsule i and parent capsule j, the logits b_ij start at 0; then r times:

    c_i = softmax_j(b_i);  s_j = sum_i c_ij û_j|i;  v_j = squash(s_j);  b_ij += û_j|i · v_j

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
autograd's several full-size temporaries per iteration. On the CPU the batch is routed in
blocks of a few examples, side by side on one worker thread per core, so that the repeated
passes of all r iterations read a block's û from the cache instead of memory
(`CPU_BLOCK_BYTES`); CUDA routes the whole batch at once. Tests check values and gradients
against a plain autograd implementation of Procedure 1, and the blocks against the whole batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

SQUASH_EPS = 1e-12
POLARISED = 0.9  # a lower capsule is "polarised" when its strongest coupling exceeds this
_T = TypeVar("_T")


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """squash(s) = |s|^2 / (1 + |s|^2) * s / |s|, along `dim`.

    The epsilon sits inside the square root of the norm only, so squash(0) = 0 exactly and its
    gradient at 0 is finite (zero), while any s with |s|^2 >> 1e-12 is squashed exactly.
    """
    return s * _squash_scale(s, dim)


def _squash_scale(s: Tensor, dim: int = -1) -> Tensor:
    """squash(s) = s * _squash_scale(s)."""
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


def dynamic_routing(
    u_hat: Tensor,
    iterations: int,
    grad: str = "all",
    diagnostics: bool = True,
    bias: Tensor | None = None,
    init_logits: Tensor | None = None,
) -> RoutingResult:
    """Route predictions û (B, N_in, N_out, D) to parents with r = `iterations` (Procedure 1).

    grad="all" back-propagates through all iterations (the official TensorFlow code);
    grad="last" treats the coupling coefficients of the last iteration as constants, which
    equals detaching û (and the bias) in the earlier iterations, as several public
    implementations do.
    Any strides are accepted; û already laid out as a transposed (B, N_out, N_in, D) tensor
    avoids a copy. `bias` (N_out, D), if given, is added to every s_j (the official code's
    digit-capsule bias; Procedure 1 has none).
    `init_logits` (B, N_in, N_out), if given, replaces the zeros b_ij starts from; it is a
    constant (no gradient flows into it). `routing.mode=random` passes random logits with
    r = 1.
    On the CPU the batch is routed in blocks of `CPU_BLOCK_BYTES` of û (see there).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    if bias is None:
        bias = u_hat.new_zeros((), dtype=_accumulation_dtype(u_hat))
    init_t = None  # (B, N_out, N_in), the layout the routing runs in
    if init_logits is not None:
        init_t = init_logits.detach().transpose(1, 2).to(_accumulation_dtype(u_hat)).contiguous()
    block = _cpu_block_size(u_hat)
    if block is None:
        u_t = u_hat.transpose(1, 2).contiguous()  # (B, N_out, N_in, D)
        outputs = _Routing.apply(u_t, bias, iterations, grad == "all", diagnostics, init_t)
    else:
        outputs = _BlockedRouting.apply(
            u_hat, bias, iterations, grad == "all", diagnostics, init_t, block
        )
    v, c_t, delta_b, entropy, max_c, polarised, lengths = outputs
    return RoutingResult(
        v=v,
        c=c_t.transpose(1, 2),
        delta_b=delta_b if diagnostics else None,
        entropy=entropy if diagnostics else None,
        max_c=max_c if diagnostics else None,
        polarised=polarised if diagnostics else None,
        lengths=lengths if diagnostics else None,
    )


CPU_BLOCK_BYTES: int | None = 4 * 2**20
"""Bytes of û that one CPU thread routes at a time (None: the whole batch at once, as on CUDA).

Every routing iteration reads û about four times (forward: s = c û and the agreement û · v;
backward: two more reductions), and at batch 128 û is 94 MB, far larger than any cache, so on
the CPU each pass ran at DRAM speed. The routing of one example does not depend on the others,
so the forward pass (all r iterations) and then the backward pass run block by block of
examples: a block's û comes from memory once per direction and every further pass reads it
from the cache. One MNIST example is 10 x 1152 x 16 x 4 B = 737 kB; 4 MiB (5 examples in fp32)
per thread keeps the blocks of both threads of the 2-core development machine, with the
backward pass's gradient block and coefficients, within its 32 MiB L3. Smaller blocks pay
per-operation overhead instead. GPUs get nothing from this (û stays in HBM, and small blocks
would only add kernel launches), so CUDA routes the whole batch at once.
"""


def _cpu_block_size(u_hat: Tensor) -> int | None:
    """Examples per routing block on the CPU (`CPU_BLOCK_BYTES`), None off the CPU."""
    if u_hat.device.type != "cpu" or CPU_BLOCK_BYTES is None or u_hat.shape[0] == 0:
        return None
    per_example = max(1, u_hat[0].numel() * u_hat.element_size())
    return max(1, CPU_BLOCK_BYTES // per_example)


_block_workers: tuple[int, ThreadPoolExecutor | None] | None = None  # (threads, pool)
_block_workers_lock = threading.Lock()


def _forget_block_workers() -> None:
    """In a forked child: the parent's worker threads do not exist there."""
    global _block_workers, _block_workers_lock
    _block_workers, _block_workers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_block_workers)


def _run_blocks(work: Callable[[slice], _T], batch: int, block: int) -> list[_T]:
    """work(part) for every block of `block` examples of the batch, results in block order.

    The blocks run side by side on `_block_pool`'s threads, each op single-threaded, rather than
    one after the other with every op split over the intra-op threads: per block that would be
    a few hundred small parallel regions, each of which waits for all threads, and when another
    process keeps the cores busy each such wait can cost a scheduler time slice (measured on
    the 2-core machine beside a competing 2-thread job: routing 2-7x slower than the whole
    batch at once). Without a pool (one intra-op thread, or a torch whose thread settings are
    not per thread) the blocks run here, one after the other.
    """
    parts = [slice(start, min(start + block, batch)) for start in range(0, batch, block)]
    pool = _block_pool() if len(parts) > 1 else None
    if pool is None:
        return [work(part) for part in parts]
    return list(pool.map(work, parts))


def _block_pool() -> ThreadPoolExecutor | None:
    """One worker thread per intra-op thread of the caller, each set to one intra-op thread.

    With ATen's OpenMP backend the intra-op thread count is per thread (OpenMP's nthreads ICV,
    MKL's thread-local setting): a worker's `torch.set_num_threads(1)` leaves the caller's
    threads alone, and only the default for threads started later, which is restored here.
    Checked once per process and thread count; None where that does not hold.
    """
    global _block_workers
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    with _block_workers_lock:
        if _block_workers is not None:
            if _block_workers[0] == threads:
                return _block_workers[1]
            if _block_workers[1] is not None:  # the thread count changed: a new pool
                _block_workers[1].shutdown(wait=False)
        pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            threads, thread_name_prefix="capsroute-routing", initializer=_one_intra_op_thread
        )
        barrier = threading.Barrier(threads, timeout=30)  # every task on its own worker

        def worker_threads(_: int) -> int:
            barrier.wait()
            return torch.get_num_threads()

        try:
            counts = list(pool.map(worker_threads, range(threads)))
        except threading.BrokenBarrierError:
            counts = []
        torch.set_num_threads(threads)  # the default for new threads, as before
        if counts != [1] * threads or torch.get_num_threads() != threads:
            pool.shutdown(wait=False)
            pool = None
        _block_workers = (threads, pool)
        return pool


def _one_intra_op_thread() -> None:
    torch.get_num_threads()  # take the process default first (ATen initialises lazily)
    torch.set_num_threads(1)


def _accumulation_dtype(u: Tensor) -> torch.dtype:
    """float32 for half-precision û, û's own dtype otherwise (float64 in gradchecks)."""
    return torch.promote_types(u.dtype, torch.float32)


def _weighted_sum(weights: Tensor, u: Tensor) -> Tensor:
    """sum_i w[b, j, i] * u[b, j, i, :]: (B, J, I) x (B, J, I, D) -> (B, J, D)."""
    product = torch.matmul(weights.to(u.dtype).unsqueeze(2), u).squeeze(2)
    return product.to(_accumulation_dtype(u))


def _agreement(u: Tensor, vectors: Tensor) -> Tensor:
    """u[b, j, i, :] · x[b, j, :]: (B, J, I, D) x (B, J, D) -> (B, J, I).

    Written as the row vector x times uᵀ, (1, D) x (D, I) per (b, j): on oneDNN/MKL CPUs that
    runs ~2-3x faster than the equivalent u x (D, 1) product (one read of u either way).
    """
    product = torch.matmul(vectors.to(u.dtype).unsqueeze(2), u.transpose(-1, -2)).squeeze(2)
    return product.to(_accumulation_dtype(u))


def _coupling_stats(c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean entropy over parents, mean max coupling, and the fraction of lower capsules whose
    max coupling exceeds `POLARISED`, of c (B, J, I); all scalars."""
    entropy = -(c * torch.log(c.clamp_min(1e-30))).sum(dim=1).mean()
    strongest = c.amax(dim=1)  # (B, I)
    return entropy, strongest.mean(), (strongest > POLARISED).to(c.dtype).mean()


def _route(
    u: Tensor,
    bias: Tensor,
    iterations: int,
    diagnostics: bool,
    logits: Tensor | None,
    out: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[tuple[Tensor, ...]]]:
    """Procedure 1 on û laid out as (B, J, I, D), contiguous, from logits (B, J, I) or zeros.

    Returns, per iteration, the coupling coefficients c (B, J, I), s (B, J, D) and v (B, J, D),
    and (with `diagnostics`, else empty) the means over these examples of |Δb|, the entropy
    of c, max_j c and the polarised fraction. `out`, if given, holds the r tensors each of c,
    s and v to write into (views of whole-batch tensors), so they need no copy afterwards.
    """
    batch, n_out, n_in, _ = u.shape
    acc_dtype = _accumulation_dtype(u)
    if logits is None:  # b_ij, (B, J, I): 0 (Procedure 1) or given constants
        logits = u.new_zeros((batch, n_out, n_in), dtype=acc_dtype)
    couplings: list[Tensor] = []
    pre_squash: list[Tensor] = []
    outputs: list[Tensor] = []
    stats: list[tuple[Tensor, ...]] = []
    for k in range(iterations):
        if out is None:
            c = torch.softmax(logits, dim=1)  # over parents j, (B, J, I)
            s = _weighted_sum(c, u) + bias  # (B, J, D)
            v = squash(s)
        else:
            c = torch.softmax(logits, dim=1, out=out[0][k])
            s = torch.add(_weighted_sum(c, u), bias, out=out[1][k])
            v = torch.mul(s, _squash_scale(s), out=out[2][k])
        couplings.append(c)
        pre_squash.append(s)
        outputs.append(v)
        last = k == iterations - 1
        if diagnostics or not last:
            update = _agreement(u, v)  # û_j|i · v_j, (B, J, I)
            if diagnostics:
                stats.append((update.abs().mean(), *_coupling_stats(c)))
            if not last:
                logits = logits + update if k == 0 else logits.add_(update)
    return couplings, pre_squash, outputs, stats


def _route_backward(
    u: Tensor,
    couplings: list[Tensor],
    pre_squash: list[Tensor],
    outputs: list[Tensor],
    grad_v: Tensor,
    through_all: bool,
    out: Tensor | None = None,
    squash_backward: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of û (B, J, I, D), in û's dtype, and of the bias (J, D), summed over the
    batch, of the routing `_route` ran on u, given ∂L/∂v of its last iteration.

    The gradient of û is written into `out` (any strides) if given. `squash_backward` defaults
    to autograd through `squash`.
    """
    r = len(couplings)
    acc_dtype = _accumulation_dtype(u)
    squash_backward = squash_backward or _squash_backward
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
            grad_out = _weighted_sum(grad_logits, u)
            coefficients.append(grad_logits)
            vectors.append(outputs[k])
        grad_s = squash_backward(pre_squash[k], grad_out)
        grad_bias = grad_bias + grad_s.sum(dim=0)
        coefficients.append(couplings[k])
        vectors.append(grad_s)
        if k > first:  # c_k = softmax_j(b_{k-1}); b_{-1} (0 or given) is a constant
            c = couplings[k]
            grad_c = _agreement(u, grad_s)
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


def _bias_gradient(ctx: Any, grad_bias: Tensor) -> Tensor | None:
    if ctx.needs_input_grad[1] and len(ctx.bias_shape) > 0:
        return grad_bias.to(ctx.bias_dtype).reshape(ctx.bias_shape)
    return None


class _Routing(torch.autograd.Function):
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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        with torch.autocast(u.device.type, enabled=False):
            acc_dtype = _accumulation_dtype(u)
            couplings, pre_squash, outputs, stats = _route(
                u, bias, iterations, diagnostics, init_logits
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
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        r = ctx.iterations
        u, *rest = ctx.saved_tensors
        couplings, pre_squash, outputs = rest[:r], rest[r : 2 * r], rest[2 * r :]
        with torch.autocast(u.device.type, enabled=False):
            grad_u, grad_bias = _route_backward(
                u, couplings, pre_squash, outputs, grad_v, ctx.through_all
            )
        return grad_u, _bias_gradient(ctx, grad_bias), None, None, None, None


class _BlockedRouting(torch.autograd.Function):
    """`_Routing` block by block of examples (CPU, `CPU_BLOCK_BYTES`), for û (B, I, J, D) in
    any layout; the blocks run on worker threads (`_run_blocks`).

    Forward: each block of û is copied into its slice of a (B, J, I, D) tensor, as `_Routing`
    gets it (the same single copy of û, saved for the backward pass), and routed through all
    r iterations while it is in the cache; c, s and v are written straight into whole-batch
    tensors. Backward: block by block again, and each block's gradient is written straight into
    a tensor laid out like the given û, so autograd needs no transposing copy of the gradient.
    Diagnostics are means over the blocks weighted by their sizes, summed in block order, as is
    the bias gradient: the result does not depend on which thread ran which block.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u_hat: Tensor,
        bias: Tensor,
        iterations: int,
        through_all: bool,
        diagnostics: bool,
        init_logits: Tensor | None,
        block: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        batch, n_in, n_out, dim = u_hat.shape
        acc_dtype = _accumulation_dtype(u_hat)

        def whole(*shape: int) -> list[Tensor]:
            return [u_hat.new_empty((batch, *shape), dtype=acc_dtype) for _ in range(iterations)]

        couplings, pre_squash, outputs = whole(n_out, n_in), whole(n_out, dim), whole(n_out, dim)
        stats = torch.zeros(4, iterations, dtype=acc_dtype, device=u_hat.device)
        u_t = u_hat.transpose(1, 2)  # (B, J, I, D)
        copy = not u_t.is_contiguous()
        if copy:
            u_t = torch.empty_like(u_t, memory_format=torch.contiguous_format)

        def route_block(part: slice) -> list[tuple[Tensor, ...]]:
            with torch.no_grad(), torch.autocast(u_hat.device.type, enabled=False):
                if copy:
                    u_t[part].copy_(u_hat[part].transpose(1, 2))
                init = None if init_logits is None else init_logits[part]
                sinks = tuple([t[part] for t in ts] for ts in (couplings, pre_squash, outputs))
                return _route(u_t[part], bias, iterations, diagnostics, init, sinks)[3]

        for start, block_stats in zip(
            range(0, batch, block), _run_blocks(route_block, batch, block), strict=True
        ):
            share = (min(start + block, batch) - start) / batch
            for k, values in enumerate(block_stats):  # means over this block
                stats[:, k] += torch.stack(values) * share
        ctx.through_all, ctx.block = through_all, block
        ctx.bias_shape, ctx.bias_dtype = bias.shape, bias.dtype
        # the gradient's layout: that of û (a meta tensor holds only shape and strides)
        ctx.grad_layout = torch.empty_like(u_hat, device="meta")
        ctx.save_for_backward(u_t, *couplings, *pre_squash, *outputs)
        ctx.iterations = iterations
        lengths = (
            torch.stack([out.norm(dim=-1) for out in outputs])
            if diagnostics
            else u_hat.new_zeros((), dtype=acc_dtype)
        )
        c_final, v = couplings[-1], outputs[-1]
        delta_b, entropy, max_c, polarised = stats.unbind(0)
        ctx.mark_non_differentiable(c_final, delta_b, entropy, max_c, polarised, lengths)
        return v.to(u_hat.dtype), c_final, delta_b, entropy, max_c, polarised, lengths

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_v: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None]:
        r, block, layout = ctx.iterations, ctx.block, ctx.grad_layout
        u_t, *rest = ctx.saved_tensors
        couplings, pre_squash, outputs = rest[:r], rest[r : 2 * r], rest[2 * r :]
        grad_u_hat = torch.empty_strided(
            layout.shape, layout.stride(), dtype=u_t.dtype, device=u_t.device
        )

        def block_backward(part: slice) -> Tensor:  # writes grad û, returns grad bias
            with torch.no_grad(), torch.autocast(u_t.device.type, enabled=False):
                return _route_backward(
                    u_t[part],
                    [c[part] for c in couplings],
                    [s[part] for s in pre_squash],
                    [v[part] for v in outputs],
                    grad_v[part],
                    ctx.through_all,
                    out=grad_u_hat[part].transpose(1, 2),
                    squash_backward=_squash_backward_closed_form,
                )[1]

        grad_bias = torch.stack(_run_blocks(block_backward, u_t.shape[0], block)).sum(dim=0)
        return grad_u_hat, _bias_gradient(ctx, grad_bias), None, None, None, None, None


def _squash_backward_closed_form(s: Tensor, grad_v: Tensor) -> Tensor:
    """`_squash_backward` without autograd (per block, autograd's bookkeeping costs more than
    the arithmetic): v = f(n) s with n = |s|^2, so ∂L/∂s = f(n) g + 2 f'(n) (g · s) s, where
    f = n / ((1 + n) q), q = sqrt(n + eps) and f' = 1 / ((1 + n)^2 q) - n / (2 (1 + n) q^3).
    """
    n = (s * s).sum(dim=-1, keepdim=True)
    q = torch.sqrt(n + SQUASH_EPS)
    one_n = 1.0 + n
    f = n / (one_n * q)
    df = 1.0 / (one_n * one_n * q) - n / (2.0 * one_n * q * q * q)
    return f * grad_v + (2.0 * df * (grad_v * s).sum(dim=-1, keepdim=True)) * s


def _squash_backward(s: Tensor, grad_v: Tensor) -> Tensor:
    """∂L/∂s given ∂L/∂v for v = squash(s), on the small (B, J, D) tensors."""
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        (grad_s,) = torch.autograd.grad(squash(s), s, grad_v)
    return grad_s
