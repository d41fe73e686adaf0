"""Leaky routing (the official code's `leaky=true`) on every routing path, against a plain
float64 implementation of `layers.py::_leaky_routing`: values, couplings and gradients."""

from __future__ import annotations

import pytest
import torch

from capsroute.routing import cpu as routing_cpu
from capsroute.routing import dynamic_routing
from tests.routing.test_reference import random_u_hat

PATHS = ("whole", "blocked", "kernel")


def leaky_reference(u_hat: torch.Tensor, iterations: int, bias: torch.Tensor | None = None):
    """The official routing loop, written out: c = softmax([0, b_i1 .. b_iJ]) without its first
    column, s_j = sum_i c_ij û_j|i (+ bias), v = squash(s), b += û · v. û (B, I, J, D)."""
    batch, n_in, n_out, _ = u_hat.shape
    b = torch.zeros(batch, n_in, n_out, dtype=u_hat.dtype)
    for _ in range(iterations):
        leak = torch.zeros(batch, n_in, 1, dtype=u_hat.dtype)
        c = torch.softmax(torch.cat([leak, b], dim=2), dim=2)[:, :, 1:]  # (B, I, J)
        s = (c.unsqueeze(-1) * u_hat).sum(dim=1)  # (B, J, D)
        if bias is not None:
            s = s + bias
        norm = s.norm(dim=-1, keepdim=True)
        v = norm**2 / (1 + norm**2) * s / norm
        b = b + (u_hat * v.unsqueeze(1)).sum(dim=-1)
    return v, c


def _select_path(monkeypatch: pytest.MonkeyPatch, path: str, u_hat: torch.Tensor) -> None:
    """Route on the whole batch, in blocks of 2 examples, or by the compiled kernel."""
    monkeypatch.setattr(routing_cpu, "CPU_KERNEL", path == "kernel")
    per_example = u_hat[0].numel() * u_hat.element_size()
    block_bytes = None if path == "whole" else 2 * per_example
    monkeypatch.setattr(routing_cpu, "CPU_BLOCK_BYTES", block_bytes)
    if path == "kernel" and routing_cpu._cpu_kernel(u_hat, torch.zeros(())) is None:
        pytest.skip("no routing kernel here (no C compiler)")


@pytest.mark.parametrize("path", ["whole", "blocked"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_leaky_routing_matches_the_official_loop_in_float64(
    monkeypatch: pytest.MonkeyPatch, path: str, iterations: int
) -> None:
    u_hat = random_u_hat((5, 7, 4, 6)).requires_grad_(True)
    bias = random_u_hat((4, 6), seed=2).requires_grad_(True)
    _select_path(monkeypatch, path, u_hat)
    weights = random_u_hat((5, 4, 6), seed=1)
    result = dynamic_routing(u_hat, iterations, bias=bias, leaky=True)
    grads = torch.autograd.grad((result.v * weights).sum(), (u_hat, bias))
    v_ref, c_ref = leaky_reference(u_hat, iterations, bias)
    grads_ref = torch.autograd.grad((v_ref * weights).sum(), (u_hat, bias))
    torch.testing.assert_close(result.v, v_ref)
    torch.testing.assert_close(result.c, c_ref)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, expected)
    small_u = random_u_hat((3, 4, 3, 4), seed=6).requires_grad_(True)  # blocks of 2, 1
    small_bias = random_u_hat((3, 4), seed=7).requires_grad_(True)
    _select_path(monkeypatch, path, small_u)
    assert torch.autograd.gradcheck(
        lambda u, b: dynamic_routing(u, iterations, diagnostics=False, bias=b, leaky=True).v,
        (small_u, small_bias),
    )


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_leaky_kernel_matches_the_official_loop(
    monkeypatch: pytest.MonkeyPatch, iterations: int
) -> None:
    """float32 kernel against the float64 loop, N_in not a multiple of the kernel's tiles."""
    u64 = random_u_hat((3, 70, 10, 16)) * 0.5
    bias64 = random_u_hat((10, 16), seed=2) * 0.1
    u_hat, bias = u64.float().requires_grad_(True), bias64.float().requires_grad_(True)
    _select_path(monkeypatch, "kernel", u_hat)
    weights = random_u_hat((3, 10, 16), seed=1)
    result = dynamic_routing(u_hat, iterations, bias=bias, leaky=True)
    grads = torch.autograd.grad((result.v * weights.float()).sum(), (u_hat, bias))
    u64.requires_grad_(True)
    bias64.requires_grad_(True)
    v_ref, c_ref = leaky_reference(u64, iterations, bias64)
    grads_ref = torch.autograd.grad((v_ref * weights).sum(), (u64, bias64))
    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(result.v.double(), v_ref, **close)
    torch.testing.assert_close(result.c.double(), c_ref, **close)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.double(), expected, **close)


@pytest.mark.parametrize("path", PATHS)
def test_leaky_couplings_leak_and_start_at_one_over_parents_plus_one(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The leak takes a share of every lower capsule: rows sum to less than 1, and with b = 0
    (r = 1) every c_ij = 1 / (N_out + 1), the official code's 1/11 for 10 classes."""
    u_hat = random_u_hat((4, 9, 10, 8), dtype=torch.float32)
    _select_path(monkeypatch, path, u_hat)
    first = dynamic_routing(u_hat, 1, leaky=True)
    torch.testing.assert_close(first.c, torch.full((4, 9, 10), 1 / 11))
    third = dynamic_routing(u_hat, 3, leaky=True)
    assert (third.c.sum(dim=2) < 1).all() and (third.c > 0).all()
    plain = dynamic_routing(u_hat, 3)  # leaky=False is Procedure 1: rows sum to 1
    torch.testing.assert_close(plain.c.sum(dim=2), torch.ones(4, 9))


def test_leaky_softmax_is_stable_for_large_logits() -> None:
    """Logits far above the leak's 0: no overflow, and the leak's share tends to 0."""
    u_hat = random_u_hat((2, 5, 3, 8), dtype=torch.float64) * 200
    result = dynamic_routing(u_hat, 3, leaky=True)
    assert torch.isfinite(result.v).all() and torch.isfinite(result.c).all()
    torch.testing.assert_close(result.c, leaky_reference(u_hat, 3)[1])
