"""Dynamic routing on the CPU: a compiled kernel, or the torch routing in cache-sized blocks.

At batch 128 the MNIST prediction tensor û is 94 MB, and every routing iteration of the torch
routing (`capsroute.routing`) reads it about four times at memory speed. Examples route
independently, so on the CPU they are routed while their û is in the cache:

- float32 û goes through a small C kernel (`routing_kernel.c`, `CPU_KERNEL`), compiled on first
  use by the system's C compiler and cached on disk: one example at a time, every iteration
  one sweep over that example's û, forward and backward;
- without a compiler (or for other dtypes) the torch routing runs in blocks of examples
  (`CPU_BLOCK_BYTES`).

Either way the examples are shared among worker threads, one per core (`_run_blocks`). Tests
check both paths against the whole-batch torch routing and a plain Procedure 1.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor

from capsroute.routing.kernel_build import build_kernel as _build_kernel
from capsroute.routing.reference import (
    accumulation_dtype,
    bias_gradient,
    coupling_stats,
    route,
    route_backward,
    squash_backward_closed_form,
)

_T = TypeVar("_T")


def route_on_cpu(
    u_hat: Tensor,
    bias: Tensor,
    iterations: int,
    grad_all: bool,
    diagnostics: bool,
    init_t: Tensor | None,
    leaky: bool = False,
) -> tuple[Tensor, ...] | None:
    """`capsroute.routing.WholeBatchRouting`'s outputs for û (B, N_in, N_out, D) on the CPU, by the
    kernel or in blocks; None off the CPU (the caller routes the whole batch at once).
    `leaky`: the official code's leaky couplings (`reference.couple`), on either path."""
    kernel = _cpu_kernel(u_hat, bias)
    args = (u_hat, bias, iterations, grad_all, diagnostics, init_t, leaky)
    if kernel is not None:
        return _KernelRouting.apply(*args, kernel)
    block = _cpu_block_size(u_hat)
    if block is None:
        return None
    return _BlockedRouting.apply(*args, block)


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


class _BlockedRouting(torch.autograd.Function):
    """`WholeBatchRouting` block by block of examples (CPU, `CPU_BLOCK_BYTES`), for û
    (B, I, J, D) in any layout; the blocks run on worker threads (`_run_blocks`).

    Forward: each block of û is copied into its slice of a (B, J, I, D) tensor, as
    `WholeBatchRouting` gets it (the same single copy of û, saved for the backward pass), and
    routed through all r iterations while it is in the cache; c, s and v are written straight
    into whole-batch tensors. Backward: block by block again, and each block's gradient is
    written straight into a tensor laid out like the given û, so autograd needs no transposing
    copy of the gradient.
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
        leaky: bool,
        block: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        batch, n_in, n_out, dim = u_hat.shape
        acc_dtype = accumulation_dtype(u_hat)

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
                return route(u_t[part], bias, iterations, diagnostics, init, sinks, leaky)[3]

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
                return route_backward(
                    u_t[part],
                    [c[part] for c in couplings],
                    [s[part] for s in pre_squash],
                    [v[part] for v in outputs],
                    grad_v[part],
                    ctx.through_all,
                    out=grad_u_hat[part].transpose(1, 2),
                    squash_grad=squash_backward_closed_form,
                )[1]

        grad_bias = torch.stack(_run_blocks(block_backward, u_t.shape[0], block)).sum(dim=0)
        return grad_u_hat, bias_gradient(ctx, grad_bias), None, None, None, None, None, None


CPU_KERNEL = os.environ.get("CAPSROUTE_ROUTING_KERNEL", "1") != "0"  # see kernel_build
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


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _KernelRouting(torch.autograd.Function):
    """Procedure 1 on float32 û (B, I, J, D) by the compiled kernel (`CPU_KERNEL`).

    Saves û itself (no transposed copy) and c, s and v of every iteration; the backward pass
    writes the gradient of û in û's own layout. Diagnostics: |Δb| sums from the kernel, the
    coupling statistics from the saved c, as in `WholeBatchRouting`.
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
        leaky: bool,
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
                int(leaky), _pointer(bias_rows), _pointer(init_logits),
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
                stats[1:, k] = torch.stack(coupling_stats(c_all[k]))
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
        grad_bias_total = bias_gradient(ctx, grad_bias.sum(dim=0))
        return grad_u, grad_bias_total, None, None, None, None, None, None


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
