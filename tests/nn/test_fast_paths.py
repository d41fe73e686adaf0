"""The speed-ups change no numbers: DigitCaps vs einsum, CPU autocast routing, allocator."""

from __future__ import annotations

import torch

from capsroute.config import ModelConfig, RoutingConfig
from capsroute.device import keep_cpu_memory_mapped
from capsroute.nn.capsnet import CapsNet
from tests.routing.test_reference import reference_routing


def small_net() -> CapsNet:
    cfg = ModelConfig(conv1_channels=8, primary_types=2, decoder_hidden=[16, 32])
    torch.manual_seed(0)
    return CapsNet((1, 28, 28), 10, cfg, RoutingConfig(iterations=3))


def test_digit_caps_equals_einsum_procedure_1() -> None:
    """û from one bmm over i, routed by the fused function == einsum û + plain Procedure 1."""
    digit = small_net().digit.double()
    u = torch.randn(3, digit.n_in, digit.in_dim, dtype=torch.float64)
    weight = digit.weight.view(digit.n_in, digit.in_dim, digit.n_out, digit.out_dim)
    u_hat = torch.einsum("bik,ikjd->bijd", u, weight)  # (B, I, J, D)
    v_ref, c_ref, _ = reference_routing(u_hat, 3)
    result = digit(u)
    torch.testing.assert_close(result.v, v_ref)
    torch.testing.assert_close(result.c, c_ref)


def test_cpu_autocast_routes_in_fp32() -> None:
    net = small_net()
    images = torch.rand(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(images, torch.tensor([1, 2]))
    assert out.routing.v.dtype == torch.float32
    torch.testing.assert_close(out.lengths, net(images).lengths, atol=3e-2, rtol=3e-2)


def test_allocator_tuning_is_idempotent() -> None:
    first = keep_cpu_memory_mapped()
    assert keep_cpu_memory_mapped() == first
