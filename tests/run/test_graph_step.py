"""`train.cuda_graph`: the graphed step trains exactly like the eager one, and its checkpoints
resume either way. On the CPU the same step body runs without a graph (what these tests drive);
the CUDA tests compare graph replay with that body and are skipped without a GPU."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from capsroute.hydra_app import load_config
from capsroute.run import rundir, train
from capsroute.run.graph_step import (
    GraphedTrainStep,
    capturable_adam,
    graph_unsupported,
    portable_optimizer_state,
    uses_graph,
)
from capsroute.run.train import train_run

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TIMING = {"epoch_seconds", "images_per_s", "eval_seconds"}
# 224 = 3 batches of 64 + a partial one of 32: the eager fallback runs every epoch
PARTIAL = ["dataset.train_size=224"]


def metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / rundir.METRICS_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: float(v) for k, v in row.items() if k not in TIMING and v} for row in rows]


def assert_close(a: list[dict[str, float]], b: list[dict[str, float]], rel: float) -> None:
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for row_a, row_b in zip(a, b, strict=True):
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], rel=rel, abs=1e-6), key


@pytest.fixture()
def forced_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the graphed code path on the CPU (its step body runs eagerly there)."""
    monkeypatch.setattr(train, "uses_graph", lambda config, device: config.train.cuda_graph)


def test_graph_path_trains_like_the_eager_step(
    tmp_path: Path, tiny_overrides: list[str], forced_graph: None
) -> None:
    base = [*tiny_overrides, *PARTIAL, "device=cpu", "train.epochs=1"]
    train_run(load_config([*base, "train.cuda_graph=false"]), tmp_path / "eager")
    summary = train_run(load_config([*base, "train.cuda_graph=true"]), tmp_path / "graph")
    assert summary["status"] == "completed"
    # fused Adam rounds differently from the foreach one: equal to float32 rounding
    assert_close(metrics(tmp_path / "graph"), metrics(tmp_path / "eager"), rel=1e-4)


@pytest.mark.slow  # three short training runs (~50 s on a busy 2-core machine)
def test_graph_checkpoint_resumes_eagerly(
    tmp_path: Path, tiny_overrides: list[str], forced_graph: None
) -> None:
    base = [*tiny_overrides, *PARTIAL, "device=cpu"]
    train_run(load_config([*base, "train.cuda_graph=true"]), tmp_path / "straight")
    train_run(load_config([*base, "train.cuda_graph=true", "train.epochs=1"]), tmp_path / "mix")
    train_run(load_config([*base, "train.cuda_graph=false"]), tmp_path / "mix")  # plain Adam
    assert_close(metrics(tmp_path / "mix"), metrics(tmp_path / "straight"), rel=1e-4)
    saved = torch.load(tmp_path / "mix" / rundir.CHECKPOINT_FILE, weights_only=False)
    assert saved["schedule"]["last_epoch"] == 8  # 2 epochs x 4 steps


def test_portable_state_loads_into_a_plain_adam() -> None:
    model = torch.nn.Linear(3, 2)
    fused = capturable_adam(torch.optim.Adam(model.parameters(), lr=1e-3), torch.tensor(5e-4))
    model(torch.randn(4, 3)).sum().backward()
    fused.step()
    plain = torch.optim.Adam(model.parameters(), lr=1e-3)
    plain.load_state_dict(portable_optimizer_state(fused, [2e-4]))
    assert plain.param_groups[0]["lr"] == 2e-4
    assert plain.param_groups[0]["fused"] is None and not plain.param_groups[0]["capturable"]
    assert isinstance(fused.param_groups[0]["lr"], torch.Tensor)  # the live one is untouched


def test_nonfinite_step_is_skipped_on_the_device(tiny_overrides: list[str]) -> None:
    config = load_config([*tiny_overrides, "train.nonfinite=skip", "device=cpu"])
    torch.manual_seed(0)
    model = train.build_model(config)
    optimizer = capturable_adam(torch.optim.Adam(model.parameters()), torch.zeros(()))
    step = GraphedTrainStep(model, optimizer, config, (8, 1, 28, 28)).prepare()
    before = [p.detach().clone() for p in model.parameters()]
    images = torch.full((8, 1, 28, 28), float("nan"))
    step.step(images, torch.zeros(8, dtype=torch.int64))
    assert step.skipped_steps() == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    step.step(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.int64))
    means, seen, bad = step.epoch_totals()
    assert seen == 8 and bad == -1 and all(torch.isfinite(torch.tensor(means)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_graph_is_used_only_where_it_can_run(
    tiny_overrides: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(tiny_overrides)
    assert config.train.cuda_graph  # on by default, for CUDA
    with caplog.at_level(logging.INFO, logger="capsroute"):
        assert not uses_graph(config, torch.device("cpu"))  # the CPU path is unchanged
    assert caplog.text == ""
    cuda = torch.device("cuda")
    assert graph_unsupported(config, cuda) is None
    assert uses_graph(config, cuda)
    assert not uses_graph(load_config([*tiny_overrides, "train.cuda_graph=false"]), cuda)
    fp16 = load_config([*tiny_overrides, "train.precision=fp16"])
    with caplog.at_level(logging.INFO, logger="capsroute"):
        assert not uses_graph(fp16, cuda)
    assert "GradScaler" in caplog.text
    random = load_config([*tiny_overrides, "routing.mode=random", "routing.iterations=1"])
    assert graph_unsupported(random, cuda) is not None


# ------------------------------------------------------------------------------------------
# CUDA: graph replay against the same body run eagerly
# ------------------------------------------------------------------------------------------


def _two_steps(config_overrides: list[str], graph: bool) -> list[torch.Tensor]:
    config = load_config(config_overrides)
    torch.manual_seed(0)
    model = train.build_model(config).cuda()
    optimizer = capturable_adam(
        torch.optim.Adam(model.parameters()), torch.zeros((), device="cuda")
    )
    step = GraphedTrainStep(model, optimizer, config, (16, 1, 28, 28))
    step.use_graph = graph
    step.prepare()
    generator = torch.Generator().manual_seed(1)
    for size in (16, 16, 16, 7, 16):  # a partial batch after the capture, then replay again
        images = torch.rand(size, 1, 28, 28, generator=generator).cuda()
        labels = torch.randint(0, 10, (size,), generator=generator).cuda()
        step.step(images, labels)
    means, seen, _ = step.epoch_totals()
    assert seen == 71
    return [p.detach().float().cpu() for p in model.parameters()] + [torch.tensor(means)]


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_equals_the_eager_body(tiny_overrides: list[str], precision: str) -> None:
    overrides = [*tiny_overrides, f"train.precision={precision}", "device=cuda"]
    eager, graphed = _two_steps(overrides, False), _two_steps(overrides, True)
    for a, b in zip(eager, graphed, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@CUDA
def test_cuda_graph_training_run_matches_eager(tmp_path: Path, tiny_overrides: list[str]) -> None:
    base = [*tiny_overrides, *PARTIAL, "device=cuda"]
    train_run(load_config([*base, "train.cuda_graph=false"]), tmp_path / "eager")
    train_run(load_config(base), tmp_path / "graph")
    assert_close(metrics(tmp_path / "graph"), metrics(tmp_path / "eager"), rel=1e-3)
