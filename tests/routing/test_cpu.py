"""The CPU routing paths (capsroute.routing_cpu) give what the whole-batch torch routing gives.

The compiled kernel and the torch routing in cache-sized blocks are checked against routing the
batch at once and against a plain Procedure 1, in value, diagnostics and gradient.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from capsroute.routing import cpu as routing_cpu
from capsroute.routing import dynamic_routing
from tests.routing.test_reference import random_u_hat, reference_routing

# --- CPU cache blocking: the batch routed in blocks gives what routing it at once gives -------


def _route_all_outputs(u_hat, iterations, grad, bias, init_logits):
    """v, c, the diagnostics and the gradients of û and the bias, as one tuple."""
    result = dynamic_routing(u_hat, iterations, grad=grad, bias=bias, init_logits=init_logits)
    weights = random_u_hat(tuple(result.v.shape), seed=4)
    grads = torch.autograd.grad((result.v * weights).sum(), (u_hat, bias))
    diagnostics = (result.delta_b, result.entropy, result.max_c, result.polarised, result.lengths)
    return (result.v, result.c, *diagnostics, *grads)


@pytest.mark.parametrize("grad", ["all", "last"])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("with_init", [False, True])
def test_blocked_routing_matches_unblocked(
    monkeypatch: pytest.MonkeyPatch, iterations: int, grad: str, with_init: bool
) -> None:
    """Blocks of 2 examples of a batch of 5 (2 + 2 + 1, the last one partial)."""
    u_hat = random_u_hat((5, 7, 4, 6)).requires_grad_(True)
    per_example = 7 * 4 * 6 * u_hat.element_size()
    bias = random_u_hat((4, 6), seed=2).requires_grad_(True)
    init = random_u_hat((5, 7, 4), seed=3) if with_init else None
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", 2 * per_example + 1)
    assert routing_cpu._cpu_block_size(u_hat) == 2
    blocked = _route_all_outputs(u_hat, iterations, grad, bias, init)
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", None)
    assert routing_cpu._cpu_block_size(u_hat) is None
    whole = _route_all_outputs(u_hat, iterations, grad, bias, init)
    for got, expected in zip(blocked, whole, strict=True):
        torch.testing.assert_close(got, expected)


def test_blocked_gradient_has_the_layout_of_u_hat(monkeypatch: pytest.MonkeyPatch) -> None:
    """DigitCaps hands over û as a permuted view of a (N_in, B, N_out, D) product: the blocked
    backward writes its gradient in that layout (no transposing copy) and in value equals the
    plain Procedure 1 gradient."""
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", 7 * 4 * 5 * 8)  # one example per block
    memory = random_u_hat((7, 3, 4, 5)).requires_grad_(True)  # (N_in, B, N_out, D)
    u_hat = memory.permute(1, 0, 2, 3)
    result = dynamic_routing(u_hat, 3)
    (grad,) = torch.autograd.grad(result.v.sum(), u_hat)
    assert grad.stride() == u_hat.stride()
    (expected,) = torch.autograd.grad(reference_routing(u_hat, 3)[0].sum(), u_hat)
    torch.testing.assert_close(grad, expected)


def test_blocked_gradcheck_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", 2 * 5 * 3 * 4 * 8)  # blocks of 2, 1
    u_hat = random_u_hat((3, 5, 3, 4)).requires_grad_(True)
    bias = random_u_hat((3, 4), seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u, b: dynamic_routing(u, 3, diagnostics=False, bias=b).v, (u_hat, bias)
    )


def test_block_size_follows_the_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", 8 * 2**20)
    mnist = torch.empty(128, 1152, 10, 16)  # 737,280 bytes per example in fp32
    assert routing_cpu._cpu_block_size(mnist) == 11
    assert routing_cpu._cpu_block_size(mnist.bfloat16()) == 22
    assert routing_cpu._cpu_block_size(torch.empty(4, 1152, 10, 1024)) == 1  # never 0
    assert routing_cpu._cpu_block_size(torch.empty(2, 3, 4, 5, device="meta")) is None


def test_blocks_on_worker_threads_match_blocks_in_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    u_hat = random_u_hat((5, 7, 4, 6)).requires_grad_(True)
    bias = random_u_hat((4, 6), seed=2).requires_grad_(True)
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", 7 * 4 * 6 * 8)  # 5 blocks
    workers = _route_all_outputs(u_hat, 3, "all", bias, None)
    monkeypatch.setattr(routing_cpu, "_block_pool", lambda: None)
    caller = _route_all_outputs(u_hat, 3, "all", bias, None)
    for got, expected in zip(workers, caller, strict=True):
        torch.testing.assert_close(got, expected)


def test_block_workers_run_single_threaded_and_leave_the_caller_alone() -> None:
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("one intra-op thread: blocks run in the caller")
    pool = routing_cpu._block_pool()
    if pool is None:
        pytest.skip("this torch build has no per-thread intra-op thread count")
    counts = list(pool.map(lambda _: torch.get_num_threads(), range(2 * threads)))
    assert counts == [1] * len(counts)
    assert torch.get_num_threads() == threads
    assert routing_cpu._block_pool() is pool  # made once


# --- the compiled CPU kernel (float32): same results as the torch operations ---------------


def _kernel_or_skip(u_hat: torch.Tensor) -> None:
    if routing_cpu._cpu_kernel(u_hat, torch.zeros((), dtype=u_hat.dtype)) is None:
        pytest.skip("no routing kernel here (no C compiler, or CAPSROUTE_ROUTING_KERNEL=0)")


@pytest.mark.parametrize("shape", [(5, 37, 3, 8), (4, 70, 10, 16)])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("grad", ["all", "last"])
@pytest.mark.parametrize("with_init", [False, True])
def test_kernel_matches_torch_operations(
    monkeypatch: pytest.MonkeyPatch, shape, iterations: int, grad: str, with_init: bool
) -> None:
    """Odd sizes too: N_in not a multiple of the kernel's tiles or vectors, 3 parents, D = 8."""
    batch, n_in, n_out, dim = shape
    memory = random_u_hat((n_in, batch, n_out, dim), dtype=torch.float32)  # DigitCaps' layout
    u_hat = memory.permute(1, 0, 2, 3).requires_grad_(True)
    _kernel_or_skip(u_hat)
    bias = random_u_hat((n_out, dim), dtype=torch.float32, seed=2).requires_grad_(True)
    init = random_u_hat((batch, n_in, n_out), dtype=torch.float32, seed=3) if with_init else None
    kernel = _route_all_outputs(u_hat, iterations, grad, bias, init)
    monkeypatch.setattr(routing_cpu, "CPU_KERNEL", False)
    torch_ops = _route_all_outputs(u_hat, iterations, grad, bias, init)
    for got, expected in zip(kernel, torch_ops, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3])
def test_kernel_matches_plain_procedure_1_in_float64(iterations: int) -> None:
    u64 = random_u_hat((3, 40, 10, 16)) * 0.5
    u_hat = u64.float().requires_grad_(True)
    _kernel_or_skip(u_hat)
    weights = random_u_hat((3, 10, 16), seed=1)
    result = dynamic_routing(u_hat, iterations)
    (grad,) = torch.autograd.grad((result.v * weights.float()).sum(), u_hat)
    u64.requires_grad_(True)
    v_ref, c_ref, delta_ref = reference_routing(u64, iterations)
    (grad_ref,) = torch.autograd.grad((v_ref * weights).sum(), u64)
    torch.testing.assert_close(result.v.double(), v_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.c.double(), c_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.delta_b.double(), delta_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["digitcaps", "contiguous", "transposed"])
def test_kernel_accepts_any_layout_and_returns_the_gradient_in_it(layout: str) -> None:
    base = random_u_hat((4, 24, 10, 16), dtype=torch.float32)  # (B, I, J, D)
    u_hat = {
        "digitcaps": base.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
        "contiguous": base,
        "transposed": base.transpose(1, 2).contiguous().transpose(1, 2),  # rows not contiguous
    }[layout].requires_grad_(True)
    _kernel_or_skip(u_hat)
    result = dynamic_routing(u_hat, 3)
    (grad,) = torch.autograd.grad(result.v.sum(), u_hat)
    assert grad.stride() == u_hat.stride() or layout == "transposed"
    plain = base.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference_routing(plain, 3)[0].sum(), plain)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_without_a_compiler_the_torch_operations_route(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CAPSROUTE_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(routing_cpu, "_kernels", {})
    u_hat = random_u_hat((2, 9, 3, 8), dtype=torch.float32)
    with caplog.at_level("WARNING", logger="capsroute"):
        assert routing_cpu._cpu_kernel(u_hat, torch.zeros(())) is None
        result = dynamic_routing(u_hat, 2)
    assert "routing runs as torch operations" in caplog.text
    torch.testing.assert_close(result.v.double(), reference_routing(u_hat.double(), 2)[0])


def test_kernel_only_where_it_applies() -> None:
    zero = torch.zeros(())
    assert routing_cpu._cpu_kernel(random_u_hat((2, 9, 3, 5), dtype=torch.float32), zero) is None
    assert routing_cpu._cpu_kernel(random_u_hat((2, 9, 3, 8)), zero.double()) is None  # float64
    bf16 = random_u_hat((2, 9, 3, 8), dtype=torch.float32).bfloat16()
    assert routing_cpu._cpu_kernel(bf16, zero) is None


def test_kernel_compiles_where_there_is_a_c_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Guards `_KERNEL_SOURCE` itself: with a compiler, a kernel built from scratch loads."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("CAPSROUTE_KERNEL_CACHE", str(tmp_path))
    assert routing_cpu._build_kernel(3, 8) is not None
    assert len(list(tmp_path.glob("routing-*.so"))) == 1
