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
autograd's several full-size temporaries per iteration; CUDA runs it on the whole batch.

On the CPU, float32 û is routed by a small C kernel compiled on first use (`CPU_KERNEL`): one
example at a time, every iteration one sweep over that example's û while it is in the cache,
forward and backward. Without a C compiler (or for other dtypes) the same torch operations
run in cache-sized blocks of examples instead (`CPU_BLOCK_BYTES`). On either CPU path the
examples are shared among worker threads, one per core (`_run_blocks`).

Tests check values and gradients against a plain autograd implementation of Procedure 1, and
the CPU paths against each other.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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
    On the CPU, float32 û is routed by a compiled kernel where one can be built
    (`CPU_KERNEL`), anything else in blocks of `CPU_BLOCK_BYTES` of û.
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
    kernel = _cpu_kernel(u_hat, bias)
    block = _cpu_block_size(u_hat)
    if kernel is not None:
        outputs = _KernelRouting.apply(
            u_hat, bias, iterations, grad == "all", diagnostics, init_t, kernel
        )
    elif block is None:
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
"""Bytes of û that one CPU thread routes at a time with torch operations, where the compiled
kernel does not route (`CPU_KERNEL`); None: the whole batch at once, as on CUDA.

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


CPU_KERNEL = os.environ.get("CAPSROUTE_ROUTING_KERNEL", "1") != "0"
"""Route float32 û on the CPU with `_KERNEL_SOURCE`, compiled on first use by the system's C
compiler (`$CC`, else `cc`) and cached (`$CAPSROUTE_KERNEL_CACHE`, else ~/.cache/capsroute).
Without a compiler, or with `CAPSROUTE_ROUTING_KERNEL=0`, the same routing runs as torch
operations in blocks (`CPU_BLOCK_BYTES`); tests check the two against each other.

Why: in torch ops every routing iteration is about four separate passes over û, each a batched
matrix-vector product of (1 x 1152) x (1152 x 16) or (1 x 16) x (16 x 1152) that MKL runs far
below the machine's speed, plus softmax, copies and per-op overhead; the cost per extra
iteration at batch 128 (~25-40 ms on the 2-core machine) kept a train step at r = 5 ~10-16%
slower than at r = 1. The kernel routes one example at a time: it copies the example's rows of
û once into a contiguous buffer that stays in the cache, and every iteration is one sweep over
it (forward: agreement, softmax and weighted sum together; backward: agreement, softmax
derivative and weighted sum together, then one sweep that writes the gradient of û straight
into û's own layout). Examples run side by side on the worker threads (`_run_blocks`).
"""

_KERNEL_SOURCE = r"""
/* Procedure 1 for float32 predictions u (B, I, J, D): rows u[b, i] of J x D contiguous floats,
   any batch and input-capsule strides. J (PARENTS) and D (DIM, a multiple of 8) are fixed at
   compile time. Each example is routed on its own; every iteration is one sweep over its u,
   tile by tile of TILE input capsules, forward (agreement, softmax, weighted sum) and backward
   (agreement, softmax derivative, weighted sum). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;
typedef float vf __attribute__((vector_size(32)));
#define J PARENTS
#define D DIM
#define V (DIM / 8)
#define TILE 64
#define SQUASH_EPS 1e-12f

static inline vf load(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }
static inline void store(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline float hsum(vf x) {
    float s = 0.0f;
    for (int l = 0; l < 8; l++) s += x[l];
    return s;
}
static inline float dot(const float *a, const float *b) {
    vf acc = load(a) * load(b);
    for (int q = 1; q < V; q++) acc += load(a + 8 * q) * load(b + 8 * q);
    return hsum(acc);
}
/* (hsum x0, ..., hsum x7) */
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int32_t vi __attribute__((vector_size(32)));
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif
static inline vf hsum8(vf x0, vf x1, vf x2, vf x3, vf x4, vf x5, vf x6, vf x7) {
#define HADD(a, b) \
    (SHUFFLE(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + SHUFFLE(a, b, 1, 3, 9, 11, 5, 7, 13, 15))
    vf t0 = HADD(x0, x1), t1 = HADD(x2, x3), t2 = HADD(x4, x5), t3 = HADD(x6, x7);
    vf u0 = HADD(t0, t1), u1 = HADD(t2, t3);
#undef HADD
    return SHUFFLE(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}
/* out[t] = u[i0 + t, j, :] . w for t in [0, n): rows of u at stride si */
static void dots(const float *uj, i64 si, const float *w, i64 n, float *out) {
    vf wv[V];
    for (int q = 0; q < V; q++) wv[q] = load(w + 8 * q);
    i64 t = 0;
    for (; t + 8 <= n; t += 8) {
        vf x[8];
        for (int l = 0; l < 8; l++) {
            const float *row = uj + (t + l) * si;
            x[l] = load(row) * wv[0];
            for (int q = 1; q < V; q++) x[l] += load(row + 8 * q) * wv[q];
        }
        store(out + t, hsum8(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]));
    }
    for (; t < n; t++) out[t] = dot(uj + t * si, w);
}
/* acc[j] += w * x for one row of D */
static inline void axpy(vf *acc, float w, const float *x) {
    for (int q = 0; q < V; q++) acc[q] += w * load(x + 8 * q);
}

/* e^x for x <= 0 (softmax arguments less their maximum): Cephes expf, relative error below
   2e-7, without branches so that the loops over it vectorise. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* c[j, i] = softmax over j of logits[j, i] for i in [i0, i1); both (J, I). */
static void softmax_tile(const float *logits, float *c, i64 I, i64 i0, i64 i1) {
    float mx[TILE], sum[TILE];
    i64 n = i1 - i0;
    for (i64 t = 0; t < n; t++) { mx[t] = logits[i0 + t]; sum[t] = 0.0f; }
    for (int j = 1; j < J; j++) {
        const float *row = logits + j * I + i0;
        for (i64 t = 0; t < n; t++) mx[t] = row[t] > mx[t] ? row[t] : mx[t];
    }
    for (int j = 0; j < J; j++) {
        const float *row = logits + j * I + i0;
        float *out = c + j * I + i0;
        for (i64 t = 0; t < n; t++) { out[t] = exp_nonpositive(row[t] - mx[t]); sum[t] += out[t]; }
    }
    for (int j = 0; j < J; j++) {
        float *out = c + j * I + i0;
        for (i64 t = 0; t < n; t++) out[t] = out[t] / sum[t];
    }
}

static void squash_rows(const float *s, float *v) {
    for (int j = 0; j < J; j++) {
        float n = dot(s + j * D, s + j * D);
        float scale = n / (1.0f + n) / sqrtf(n + SQUASH_EPS);
        for (int d = 0; d < D; d++) v[j * D + d] = s[j * D + d] * scale;
    }
}

/* dL/ds from dL/dv for v = squash(s): f(n) g + 2 f'(n) (g . s) s with n = |s|^2. */
static void squash_backward_rows(const float *s, const float *g, float *out) {
    for (int j = 0; j < J; j++) {
        const float *sj = s + j * D, *gj = g + j * D;
        float n = dot(sj, sj), gs = dot(gj, sj);
        float q = sqrtf(n + SQUASH_EPS), one_n = 1.0f + n;
        float f = n / (one_n * q);
        float df = 1.0f / (one_n * one_n * q) - n / (2.0f * one_n * q * q * q);
        for (int d = 0; d < D; d++) out[j * D + d] = f * gj[d] + 2.0f * df * gs * sj[d];
    }
}

/* s += sum over i in [i0, i1) of w[j, i] u[i, j, :] */
static void weighted_sum_tile(const float *ub, i64 si, const float *w, i64 I, i64 i0, i64 i1,
                              float *s) {
    vf part[J * V];
    memset(part, 0, sizeof part);
    for (i64 i = i0; i < i1; i++) {
        const float *ui = ub + i * si;
        for (int j = 0; j < J; j++) axpy(part + j * V, w[j * I + i], ui + j * D);
    }
    for (int j = 0; j < J; j++)
        for (int q = 0; q < V; q++) {
            float *sq = s + j * D + 8 * q;
            store(sq, load(sq) + part[j * V + q]);
        }
}

/* dst (I, J, D) contiguous = the rows of one example, src + i * si: every further sweep reads
   the copy, which stays in the cache (rows at a large power-of-two-like stride map onto few
   cache sets and evict each other). */
static void gather(float *dst, const float *src, i64 si, i64 I) {
    for (i64 i = 0; i < I; i++) memcpy(dst + i * J * D, src + i * si, sizeof(float) * J * D);
}

/* Examples [b0, b1) of B: c (r, B, J, I), s and v (r, B, J, D) written; delta (B, r) or NULL:
   per example and iteration, the sum over (j, i) of |u_ji . v_j|; bias (J, D) or NULL; init
   (B, J, I) or NULL: the starting logits (zeros). Returns 0, or 1 when out of memory. */
int routing_forward(const float *u, i64 B, i64 I, i64 sb, i64 si, i64 b0, i64 b1, i64 r,
                    const float *bias, const float *init, float *c_all, float *s_all,
                    float *v_all, double *delta) {
    float *logits = malloc(sizeof(float) * J * I), *ub = malloc(sizeof(float) * I * J * D);
    if (!logits || !ub) { free(logits); free(ub); return 1; }
    for (i64 b = b0; b < b1; b++) {
        gather(ub, u + b * sb, si, I);
        if (init) memcpy(logits, init + b * J * I, sizeof(float) * J * I);
        else memset(logits, 0, sizeof(float) * J * I);
        float *c0 = c_all + b * J * I, *s0 = s_all + b * J * D;
        memset(s0, 0, sizeof(float) * J * D);
        for (i64 i0 = 0; i0 < I; i0 += TILE) {
            i64 i1 = i0 + TILE < I ? i0 + TILE : I;
            softmax_tile(logits, c0, I, i0, i1);
            weighted_sum_tile(ub, J * D, c0, I, i0, i1, s0);
        }
        if (bias) for (int e = 0; e < J * D; e++) s0[e] += bias[e];
        for (i64 k = 0; k < r; k++) {
            const float *s = s_all + (k * B + b) * J * D;
            float *v = v_all + (k * B + b) * J * D;
            squash_rows(s, v);
            int next = k + 1 < r;
            if (!next && !delta) break;
            float *cn = next ? c_all + ((k + 1) * B + b) * J * I : NULL;
            float *sn = next ? s_all + ((k + 1) * B + b) * J * D : NULL;
            if (sn) memset(sn, 0, sizeof(float) * J * D);
            double dsum = 0.0;
            for (i64 i0 = 0; i0 < I; i0 += TILE) {
                i64 i1 = i0 + TILE < I ? i0 + TILE : I;
                for (int j = 0; j < J; j++) { /* b_ji += u_ji . v_j */
                    float a[TILE];
                    dots(ub + i0 * J * D + j * D, J * D, v + j * D, i1 - i0, a);
                    if (delta) for (i64 t = 0; t < i1 - i0; t++) dsum += fabsf(a[t]);
                    if (next) for (i64 t = 0; t < i1 - i0; t++) logits[j * I + i0 + t] += a[t];
                }
                if (!next) continue;
                softmax_tile(logits, cn, I, i0, i1);
                weighted_sum_tile(ub, J * D, cn, I, i0, i1, sn);
            }
            if (sn && bias) for (int e = 0; e < J * D; e++) sn[e] += bias[e];
            if (delta) delta[b * r + k] = dsum;
        }
    }
    free(logits);
    free(ub);
    return 0;
}

/* Backward for examples [b0, b1): every element of grad_u[b] (B, I, J, D; strides gb, gi and
   rows of J x D contiguous) written, and grad_bias[b] (B, J, D) += sum over the iterations
   gone through of dL/ds_k. through_all = 0: only the last iteration (grad="last"). */
int routing_backward(const float *u, i64 B, i64 I, i64 sb, i64 si, i64 b0, i64 b1, i64 r,
                     int through_all, const float *c_all, const float *s_all,
                     const float *v_all, const float *grad_v, float *grad_u, i64 gb, i64 gi,
                     float *grad_bias) {
    i64 first = through_all ? 0 : r - 1;
    /* gl[k] (J, I), k in [first, r - 2]: dL/db_k; gs[k] (J, D): dL/ds_k; A: sum_i gl u */
    float *gl = malloc(sizeof(float) * (r > 1 ? r - 1 : 1) * J * I);
    float *gs = malloc(sizeof(float) * r * J * D);
    float *A = malloc(sizeof(float) * J * D), *ub = malloc(sizeof(float) * I * J * D);
    if (!gl || !gs || !A || !ub) { free(gl); free(gs); free(A); free(ub); return 1; }
    for (i64 b = b0; b < b1; b++) {
        gather(ub, u + b * sb, si, I);
        float *gbias = grad_bias + b * J * D;
        const float *prev = NULL; /* dL/db_k of the iteration being undone (NULL: zeros) */
        for (i64 k = r - 1; k >= first; k--) {
            float *gsk = gs + k * J * D;
            const float *gout = k == r - 1 ? grad_v + b * J * D : A;
            squash_backward_rows(s_all + (k * B + b) * J * D, gout, gsk);
            for (int e = 0; e < J * D; e++) gbias[e] += gsk[e];
            if (k == first) break;
            /* c_k = softmax(b_{k-1}): dL/db_{k-1} = dL/db_k + c (g - sum_j c g), g = u . dL/ds_k;
               and A = sum_i dL/db_{k-1} u, the dL/dv of the iteration before */
            const float *ck = c_all + (k * B + b) * J * I;
            float *next = gl + (k - 1) * J * I;
            memset(A, 0, sizeof(float) * J * D);
            for (i64 i0 = 0; i0 < I; i0 += TILE) {
                i64 i1 = i0 + TILE < I ? i0 + TILE : I;
                i64 n = i1 - i0;
                float g[J][TILE], m[TILE];
                for (i64 t = 0; t < n; t++) m[t] = 0.0f;
                for (int j = 0; j < J; j++) {
                    dots(ub + i0 * J * D + j * D, J * D, gsk + j * D, n, g[j]);
                    const float *cj = ck + j * I + i0;
                    for (i64 t = 0; t < n; t++) m[t] += cj[t] * g[j][t];
                }
                for (int j = 0; j < J; j++) {
                    const float *cj = ck + j * I + i0;
                    float *nj = next + j * I + i0;
                    if (prev) {
                        const float *pj = prev + j * I + i0;
                        for (i64 t = 0; t < n; t++) nj[t] = pj[t] + cj[t] * (g[j][t] - m[t]);
                    } else {
                        for (i64 t = 0; t < n; t++) nj[t] = cj[t] * (g[j][t] - m[t]);
                    }
                }
                weighted_sum_tile(ub, J * D, next, I, i0, i1, A);
            }
            prev = next;
        }
        /* grad u_ji = sum_k c_k[j, i] dL/ds_k[j] + sum_{k < r-1} dL/db_k[j, i] v_k[j] */
        for (i64 i = 0; i < I; i++) {
            float *out = grad_u + b * gb + i * gi;
            for (int j = 0; j < J; j++) {
                vf acc[V];
                memset(acc, 0, sizeof acc);
                for (i64 k = first; k < r; k++) {
                    axpy(acc, c_all[((k * B + b) * J + j) * I + i], gs + (k * J + j) * D);
                    if (k < r - 1)
                        axpy(acc, gl[(k * J + j) * I + i], v_all + ((k * B + b) * J + j) * D);
                }
                for (int q = 0; q < V; q++) store(out + j * D + 8 * q, acc[q]);
            }
        }
    }
    free(gl); free(gs); free(A); free(ub);
    return 0;
}
"""
_KERNEL_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-std=c99", "-shared", "-fPIC")
_kernels: dict[tuple[int, int], Any] = {}  # (N_out, D) -> ctypes library, or None: not built
_kernels_lock = threading.Lock()
log = logging.getLogger("capsroute")


def _cpu_kernel(u_hat: Tensor, bias: Tensor) -> Any:
    """The compiled routing kernel for û's shape, or None where the torch path must route:
    off the CPU, û not float32, D not a multiple of 8, or no kernel could be built."""
    if not CPU_KERNEL or u_hat.device.type != "cpu" or u_hat.dtype != torch.float32:
        return None
    batch, _, n_out, dim = u_hat.shape
    if batch == 0 or dim % 8 != 0 or bias.dtype != torch.float32:
        return None
    with _kernels_lock:
        if (n_out, dim) not in _kernels:
            _kernels[n_out, dim] = _build_kernel(n_out, dim)
        return _kernels[n_out, dim]


def _build_kernel(n_out: int, dim: int) -> Any:
    """Compile (or find in the cache) and load the kernel for N_out parents of dimension D."""
    compiler = os.environ.get("CC", "cc")
    defines = (f"-DPARENTS={n_out}", f"-DDIM={dim}")
    # -march=native first (AVX2/FMA on the development machine); the cache key holds the CPU
    for arch in (("-march=native",), ()):
        flags = (*_KERNEL_FLAGS, *arch, *defines)
        key = hashlib.sha256(
            "\0".join((_KERNEL_SOURCE, compiler, *flags, platform.machine(), _cpu_flags())).encode()
        ).hexdigest()[:16]
        path = _kernel_cache() / f"routing-{key}.so"
        try:
            if not path.exists():
                _compile(compiler, flags, path)
            library = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as error:
            log.debug("routing kernel with %s: %s", " ".join(flags), error)
            continue
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        library.routing_forward.argtypes = [pointer, *[size] * 7, *[pointer] * 6]
        library.routing_backward.argtypes = [
            pointer, *[size] * 7, ctypes.c_int, *[pointer] * 5, size, size, pointer
        ]  # fmt: skip
        library.routing_forward.restype = library.routing_backward.restype = ctypes.c_int
        return library
    log.warning(
        "no C compiler could build the routing kernel (%s): routing runs as torch operations, "
        "slower on the CPU; set CC to a C compiler to fix",
        compiler,
    )
    return None


def _compile(compiler: str, flags: tuple[str, ...], path: Path) -> None:
    """Compile `_KERNEL_SOURCE` to `path` (written under a temporary name, then renamed, so
    that processes compiling at once never load a half-written file)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "routing.c"
        source.write_text(_KERNEL_SOURCE)
        built = Path(tmp) / "routing.so"
        subprocess.run(
            [compiler, *flags, "-o", str(built), str(source), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(built, partial)
        os.replace(partial, path)


def _kernel_cache() -> Path:
    root = os.environ.get("CAPSROUTE_KERNEL_CACHE")
    if root:
        return Path(root)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capsroute"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"capsroute-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so that a cache shared between machines never hands
    one CPU a kernel built with instructions only another has."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _KernelRouting(torch.autograd.Function):
    """Procedure 1 on float32 û (B, I, J, D) by the compiled kernel (`CPU_KERNEL`).

    Saves û itself (no transposed copy) and c, s and v of every iteration; the backward pass
    writes the gradient of û in û's own layout. Diagnostics: |Δb| sums from the kernel, the
    coupling statistics from the saved c, as in `_Routing`.
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
        kernel: Any,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        u = _rows_contiguous(u_hat)
        batch, n_in, n_out, dim = u.shape
        r = iterations
        c_all = u.new_empty((r, batch, n_out, n_in))
        s_all, v_all = u.new_empty((r, batch, n_out, dim)), u.new_empty((r, batch, n_out, dim))
        delta = u.new_zeros((batch, r), dtype=torch.float64) if diagnostics else None
        bias_rows = bias.contiguous() if bias.dim() > 0 else None  # (J, D) or no bias

        def route(part: slice) -> None:
            status = kernel.routing_forward(
                u.data_ptr(), batch, n_in, u.stride(0), u.stride(1), part.start, part.stop, r,
                _pointer(bias_rows), _pointer(init_logits),
                c_all.data_ptr(), s_all.data_ptr(), v_all.data_ptr(), _pointer(delta),
            )  # fmt: skip
            if status:
                raise MemoryError("routing kernel: out of memory")

        _run_blocks(route, batch, _kernel_block(batch))
        ctx.through_all, ctx.kernel = through_all, kernel
        ctx.bias_shape, ctx.bias_dtype = bias.shape, bias.dtype
        ctx.save_for_backward(u, c_all, s_all, v_all)
        stats = torch.zeros(4, r, dtype=u.dtype)
        if diagnostics:
            assert delta is not None
            stats[0] = (delta.sum(dim=0) / (batch * n_out * n_in)).to(u.dtype)
            for k in range(r):
                stats[1:, k] = torch.stack(_coupling_stats(c_all[k]))
        lengths = v_all.norm(dim=-1) if diagnostics else u.new_zeros(())
        c_final = c_all[-1]
        delta_b, entropy, max_c, polarised = stats.unbind(0)
        ctx.mark_non_differentiable(c_final, delta_b, entropy, max_c, polarised, lengths)
        return v_all[-1].clone(), c_final, delta_b, entropy, max_c, polarised, lengths

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_v: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None]:
        u, c_all, s_all, v_all = ctx.saved_tensors
        r, batch, n_out, n_in = c_all.shape
        grad_v = grad_v.to(torch.float32).contiguous()
        grad_u = torch.empty_like(u)  # û's layout: what autograd hands on needs no copy
        grad_bias = u.new_zeros((batch, n_out, u.shape[-1]))

        def backward(part: slice) -> None:
            status = ctx.kernel.routing_backward(
                u.data_ptr(), batch, n_in, u.stride(0), u.stride(1), part.start, part.stop, r,
                int(ctx.through_all), c_all.data_ptr(), s_all.data_ptr(), v_all.data_ptr(),
                grad_v.data_ptr(), grad_u.data_ptr(), grad_u.stride(0), grad_u.stride(1),
                grad_bias.data_ptr(),
            )  # fmt: skip
            if status:
                raise MemoryError("routing kernel: out of memory")

        _run_blocks(backward, batch, _kernel_block(batch))
        return grad_u, _bias_gradient(ctx, grad_bias.sum(dim=0)), None, None, None, None, None


def _rows_contiguous(u_hat: Tensor) -> Tensor:
    """û with each (J, D) row contiguous, as the kernel reads it: DigitCaps' permuted view and
    a contiguous (B, I, J, D) tensor as they are, anything else copied."""
    _, _, n_out, dim = u_hat.shape
    if u_hat.stride(3) == 1 and (u_hat.stride(2) == dim or n_out == 1):
        return u_hat
    return u_hat.contiguous()


def _kernel_block(batch: int) -> int:
    """Examples per kernel call: a few calls per worker thread, for an even load."""
    return max(1, -(-batch // (4 * max(1, torch.get_num_threads()))))


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
