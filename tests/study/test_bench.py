"""`capsroute bench` and the fast paths it measures: right keys, right counts, same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from capsroute.cli import cli
from capsroute.cli.options import parse_int_list, parse_precisions
from capsroute.config import ModelConfig
from capsroute.errors import ConfigError
from capsroute.nn.capsnet import conv2d_fast_weight_grad
from capsroute.study.bench import flop_counts
from tests.conftest import TINY_MODEL

ROW_KEYS = {
    "mode",
    "iters",
    "batch_size",
    "precision",
    "device",
    "ms_per_step",
    "img_per_s",
    "peak_mem_mb",
    "gflops_per_image",
    "ceiling_fraction",
}


def test_bench_json_has_the_documented_keys(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--iters", "1,2", "--batch-size", "2", "--precision", "fp32"]
    args += ["--device", "cpu", "--steps", "1", "--warmup", "0", "--json", str(out), *TINY_MODEL]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(row["mode"], row["iters"]) for row in rows] == [
        ("train", 1),
        ("train", 2),
        ("eval", 1),
        ("eval", 2),
    ]
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert row["batch_size"] == 2 and row["precision"] == "fp32" and row["device"] == "cpu"
        assert row["ms_per_step"] > 0 and row["peak_mem_mb"] > 0 and row["ceiling_fraction"] > 0
    assert rows[0]["loader_fraction"] is not None and rows[2]["loader_fraction"] is None


def test_bench_rejects_bad_lists() -> None:
    with pytest.raises(ConfigError, match="--iters"):
        parse_int_list("1,x", "--iters", 1)
    with pytest.raises(ConfigError, match="--batch-size"):
        parse_int_list("0", "--batch-size", 1)
    with pytest.raises(ConfigError, match="precision"):
        parse_precisions("fp32,fp8")
    assert parse_int_list("1, 3,5", "--iters", 1) == [1, 3, 5]


def test_mnist_flops_match_the_issue() -> None:
    """~1.2 GFLOP per training image, dominated by the PrimaryCaps convolution."""
    counts = flop_counts(ModelConfig(), (1, 28, 28), 10, 3)
    assert counts.primary == 2 * 256 * 81 * 256 * 6 * 6
    assert counts.conv1 == 2 * 81 * 256 * 20 * 20
    assert counts.predictions == 2 * 1152 * 10 * 8 * 16
    assert counts.routing == 2 * 1152 * 10 * 16 * 5
    assert counts.decoder == 2 * (160 * 512 + 512 * 1024 + 1024 * 784)
    assert counts.per_image("train") == pytest.approx(1.22e9, rel=0.01)
    assert counts.per_image("eval") == counts.forward(decoder=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [20, 21])
def test_fast_weight_grad_conv_matches_conv2d(dtype: torch.dtype, size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, size, size, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(5, 4, 9, 9, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, generator=generator, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(3, 5, (size - 9) // 2 + 1, (size - 9) // 2 + 1, dtype=dtype)
    fast = conv2d_fast_weight_grad(x, weight, bias, 2)
    ref = torch.nn.functional.conv2d(x, weight, bias, stride=2)
    torch.testing.assert_close(fast, ref)
    grads_fast = torch.autograd.grad(fast, (x, weight, bias), grad_out)
    grads_ref = torch.autograd.grad(ref, (x, weight, bias), grad_out)
    for got, expected in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fast_weight_grad_conv_gradcheck() -> None:
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: conv2d_fast_weight_grad(*a, 2), (x, weight, bias))
