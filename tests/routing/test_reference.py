"""Routing and squash follow Procedure 1 exactly, in value and in gradient."""

from __future__ import annotations

import pytest
import torch

from capsroute.routing import dynamic_routing, squash


def reference_routing(u_hat: torch.Tensor, iterations: int, grad: str = "all", bias=None):
    """Procedure 1 as written in the paper, with plain autograd.

    u_hat: (B, I, J, D). Returns v (B, J, D), c (B, I, J) and per-iteration mean |Δb|.
    grad="last" detaches û (and the bias) in all but the last iteration.
    """
    batch, n_in, n_out, _ = u_hat.shape
    b = torch.zeros(batch, n_in, n_out, dtype=u_hat.dtype)
    deltas = []
    for k in range(iterations):
        last = k == iterations - 1
        u = u_hat if (grad == "all" or last) else u_hat.detach()
        c = torch.softmax(b, dim=2)
        s = (c.unsqueeze(-1) * u).sum(dim=1)  # (B, J, D)
        if bias is not None:
            s = s + (bias if (grad == "all" or last) else bias.detach())
        norm = s.norm(dim=-1, keepdim=True)
        v = norm**2 / (1 + norm**2) * s / norm
        delta = (u * v.unsqueeze(1)).sum(dim=-1)  # (B, I, J)
        deltas.append(delta.abs().mean())
        b = b + delta
    return v, c, torch.stack(deltas)


def random_u_hat(shape=(3, 7, 4, 5), dtype=torch.float64, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_coefficients_are_distributions_over_parents(iterations: int) -> None:
    result = dynamic_routing(random_u_hat(dtype=torch.float32), iterations)
    assert result.c.shape == (3, 7, 4)
    assert result.v.shape == (3, 4, 5)
    assert (result.c >= 0).all()
    torch.testing.assert_close(result.c.sum(dim=2), torch.ones(3, 7))


def test_one_iteration_couples_uniformly() -> None:
    result = dynamic_routing(random_u_hat(dtype=torch.float32), 1)
    torch.testing.assert_close(result.c, torch.full((3, 7, 4), 0.25))
    assert result.entropy is not None and result.max_c is not None
    torch.testing.assert_close(result.entropy, torch.log(torch.tensor([4.0])))
    torch.testing.assert_close(result.max_c, torch.tensor([0.25]))


@pytest.mark.parametrize("iterations", [1, 2, 3, 6])
def test_matches_plain_procedure_1(iterations: int) -> None:
    u_hat = random_u_hat()
    v_ref, c_ref, delta_ref = reference_routing(u_hat, iterations)
    result = dynamic_routing(u_hat, iterations)
    torch.testing.assert_close(result.v, v_ref)
    torch.testing.assert_close(result.c, c_ref)
    torch.testing.assert_close(result.delta_b, delta_ref)


@pytest.mark.parametrize("grad", ["all", "last"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_gradients_match_autograd_reference(iterations: int, grad: str) -> None:
    u_hat = random_u_hat().requires_grad_(True)
    weights = random_u_hat((3, 4, 5), seed=1)
    (grad_fast,) = torch.autograd.grad(
        (dynamic_routing(u_hat, iterations, grad=grad).v * weights).sum(), u_hat
    )
    (grad_ref,) = torch.autograd.grad(
        (reference_routing(u_hat, iterations, grad=grad)[0] * weights).sum(), u_hat
    )
    torch.testing.assert_close(grad_fast, grad_ref)


@pytest.mark.parametrize("iterations", [1, 3])
def test_gradcheck_float64(iterations: int) -> None:
    """grad='all' is the true derivative of Procedure 1 ('last' is not, by design)."""
    u_hat = random_u_hat((2, 5, 3, 4)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda u: dynamic_routing(u, iterations, diagnostics=False).v, (u_hat,)
    )


@pytest.mark.parametrize("grad", ["all", "last"])
def test_bias_matches_reference_in_value_and_gradient(grad: str) -> None:
    u_hat = random_u_hat().requires_grad_(True)
    bias = random_u_hat((4, 5), seed=2).requires_grad_(True)
    fast = dynamic_routing(u_hat, 3, grad=grad, bias=bias).v
    ref = reference_routing(u_hat, 3, grad=grad, bias=bias)[0]
    torch.testing.assert_close(fast, ref)
    weights = random_u_hat((3, 4, 5), seed=3)
    grads_fast = torch.autograd.grad((fast * weights).sum(), (u_hat, bias))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (u_hat, bias))
    for got, expected in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(got, expected)


def test_gradient_modes_differ_beyond_one_iteration() -> None:
    u_hat = random_u_hat().requires_grad_(True)
    grads = [
        torch.autograd.grad(dynamic_routing(u_hat, 3, grad=g).v.sum(), u_hat)[0]
        for g in ("all", "last")
    ]
    assert not torch.allclose(grads[0], grads[1])


def test_no_gradient_reaches_u_hat_through_early_iterations_in_last_mode() -> None:
    """With grad='last', ∂v/∂û equals that of a fixed-coupling layer using the final c."""
    u_hat = random_u_hat().requires_grad_(True)
    result = dynamic_routing(u_hat, 3, grad="last")
    c = result.c.detach()
    s = (c.unsqueeze(-1) * u_hat).sum(dim=1)
    (expected,) = torch.autograd.grad(squash(s).sum(), u_hat)
    (actual,) = torch.autograd.grad(result.v.sum(), u_hat)
    torch.testing.assert_close(actual, expected)


def test_accepts_transposed_layout_without_changing_results() -> None:
    u_hat = random_u_hat()
    transposed = u_hat.transpose(1, 2).contiguous().transpose(1, 2)  # (B, I, J, D) view
    torch.testing.assert_close(dynamic_routing(transposed, 3).v, dynamic_routing(u_hat, 3).v)


def test_bf16_predictions_route_close_to_fp32() -> None:
    u_hat = random_u_hat(dtype=torch.float32)
    fp32 = dynamic_routing(u_hat, 3)
    bf16 = dynamic_routing(u_hat.bfloat16(), 3)
    assert bf16.v.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.v.float(), fp32.v, atol=2e-2, rtol=2e-2)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="iterations"):
        dynamic_routing(random_u_hat(), 0)
    with pytest.raises(ValueError, match="grad"):
        dynamic_routing(random_u_hat(), 2, grad="some")


def test_squash_values() -> None:
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=torch.float64)
    v = squash(s)
    torch.testing.assert_close(v[0], torch.tensor([3.0, 4.0], dtype=torch.float64) * 25 / 26 / 5)
    assert torch.equal(v[1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(v[2, 0], torch.tensor(1e-6 / (1 + 1e-6), dtype=torch.float64))
    assert (v.norm(dim=-1) < 1).all()


def test_squash_gradient_is_finite_at_zero() -> None:
    s = torch.zeros(4, 8, requires_grad=True)
    v = squash(s)
    (grad,) = torch.autograd.grad(v.sum(), s)
    assert torch.isfinite(v).all() and torch.isfinite(grad).all()
    assert torch.equal(grad, torch.zeros_like(grad))
