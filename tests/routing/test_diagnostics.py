"""Routing-level pieces of the study controls: given initial logits, polarisation, lengths."""

from __future__ import annotations

import pytest
import torch

from capsroute.routing import dynamic_routing


def u_hat(shape: tuple[int, ...] = (4, 9, 5, 6), seed: int = 0) -> torch.Tensor:
    """Random predictions û (B, N_in, N_out, D)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_random_initial_logits_are_constants_for_the_gradient() -> None:
    u = u_hat().requires_grad_(True)
    logits = torch.randn(4, 9, 5, requires_grad=True)
    result = dynamic_routing(u, 1, init_logits=logits)
    torch.testing.assert_close(result.c, torch.softmax(logits.detach(), dim=2))
    result.v.sum().backward()
    assert logits.grad is None and u.grad is not None


@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_polarised_fraction_and_lengths_per_iteration(iterations: int) -> None:
    result = dynamic_routing(u_hat(), iterations)
    assert result.polarised is not None and result.lengths is not None
    assert result.polarised.shape == (iterations,) and result.lengths.shape == (iterations, 4, 5)
    assert result.polarised[0] == 0.0  # c = 1/5 everywhere in the first iteration
    torch.testing.assert_close(result.lengths[-1], result.v.norm(dim=-1))
    strongest = result.c.amax(dim=2)
    assert result.polarised[-1] == (strongest > 0.9).float().mean()


def test_routing_from_given_logits_matches_plain_autograd_in_value_and_gradient() -> None:
    """Procedure 1 started from logits L instead of 0, with L a constant: r = 3, float64."""
    u = u_hat().double().requires_grad_(True)
    start = torch.randn(4, 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = start.clone()
    for _ in range(3):
        c = torch.softmax(b, dim=2)  # (B, I, J)
        s = (c.unsqueeze(-1) * u).sum(dim=1)  # (B, J, D)
        norm = s.norm(dim=-1, keepdim=True)
        v_ref = norm**2 / (1 + norm**2) * s / norm
        b = b + (u * v_ref.unsqueeze(1)).sum(dim=-1)
    (grad_ref,) = torch.autograd.grad((v_ref * v_ref.detach()).sum(), u)
    result = dynamic_routing(u, 3, init_logits=start)
    (grad,) = torch.autograd.grad((result.v * v_ref.detach()).sum(), u)
    torch.testing.assert_close(result.v, v_ref)
    torch.testing.assert_close(grad, grad_ref)
