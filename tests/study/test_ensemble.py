"""The ensemble row: averaged class scores of several trained runs on one test set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capsroute.data.batches import eval_batches, make_splits
from capsroute.errors import ConfigError
from capsroute.hydra_app import load_config
from capsroute.run.checkpoint import load_run
from capsroute.run.evaluate import classify
from capsroute.run.train import train_run
from capsroute.study.ensemble import evaluate_ensemble, write_ensemble
from tests.cli.test_cli import assert_one_line_error, run_cli


def test_ensemble_averages_the_members_scores(tmp_path: Path, tiny_overrides: list[str]) -> None:
    runs = []
    for name, extra in (("a", "routing.iterations=1"), ("b", "routing.iterations=2")):
        config = load_config([*tiny_overrides, "train.epochs=1", extra])
        train_run(config, tmp_path / name)
        runs.append(tmp_path / name)
    result = evaluate_ensemble(runs)

    config = load_run(runs[0]).config
    test = make_splits(config.dataset, config.seed, torch.device("cpu")).test
    cpu = torch.device("cpu")

    def member_scores(run: Path) -> torch.Tensor:  # (128, 10) class-capsule lengths
        model = load_run(run).model
        batches = eval_batches(test, config.dataset, 64, cpu)
        return torch.cat([classify(model, images, cpu) for images, _, _ in batches])

    scores = [member_scores(run) for run in runs]
    mean = (scores[0] + scores[1]) / 2
    assert result.images == 128 and result.models == 2
    assert result.error == pytest.approx(float((mean.argmax(1) != test.labels).float().mean()))
    assert result.member_errors == [
        pytest.approx(float((s.argmax(1) != test.labels).float().mean())) for s in scores
    ]
    saved = json.loads(write_ensemble(result, tmp_path).read_text())
    assert saved["models"] == 2 and saved["error"] == pytest.approx(result.error)

    other = load_config([*tiny_overrides, "train.epochs=1", "seed=1"])  # another test subset
    train_run(other, tmp_path / "c")
    with pytest.raises(ConfigError, match="different images"):
        evaluate_ensemble([*runs, tmp_path / "c"])


def test_command_without_trained_runs_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("ensemble", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 2, "no run with checkpoint.pt under")
