"""`capsroute bench --variants eager,graph`: the graphed train step is timed beside the eager
one on CUDA, and asking for it where it cannot run is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from capsroute.cli import cli
from tests.conftest import TINY_MODEL

SMALL = ["--batch-size", "4", "--precision", "fp32", "--steps", "1", "--warmup", "0"]


def test_graph_variant_needs_cuda() -> None:
    args = ["bench", "--device", "cpu", "--iters", "1", *SMALL, "--variants", "eager,graph"]
    result = CliRunner().invoke(cli, [*args, *TINY_MODEL])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "error: --variants graph: not a CUDA device"


def test_unknown_variant_is_refused() -> None:
    result = CliRunner().invoke(cli, ["bench", "--device", "cpu", "--variants", "eager,fast"])
    assert result.exit_code == 2 and "unknown variant 'fast'" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bench_times_eager_and_graph(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cuda", "--iters", "1,3", *SMALL, "--variants", "eager,graph"]
    result = CliRunner().invoke(cli, [*args, "--json", str(out), *TINY_MODEL])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    train = [(r["variant"], r["iters"]) for r in rows if r["mode"] == "train"]
    assert train == [("eager", 1), ("eager", 3), ("graph", 1), ("graph", 3)]
    assert [r["variant"] for r in rows if r["mode"] == "eval"] == ["eager", "eager"]
    assert all(r["ms_per_step"] > 0 for r in rows)
