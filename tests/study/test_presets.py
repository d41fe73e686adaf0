"""The paper presets in conf/experiment/: they compose, and a sweep honours their grid.

`capsroute sweep experiment=NAME` plans the preset's own grid (`hydra.sweeper.params`); the
command's options and overrides still replace any axis. Dry runs only: nothing is trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capsroute import hydra_app
from capsroute.errors import ConfigError
from capsroute.study.sweep import options as sweep_options
from capsroute.study.sweep import plan as sweep_plan
from tests.cli.test_cli import run_cli


def plan(tmp_path: Path, *overrides: str, **options: object) -> sweep_plan.SweepPlan:
    request = sweep_options.SweepRequest(
        overrides=[*overrides, f"hydra.sweep.dir={tmp_path}/sweep"], dry_run=True, **options
    )
    return sweep_plan.plan_sweep(request)


def cells(sweep: sweep_plan.SweepPlan) -> list[tuple[str, int, int, str]]:
    """(dataset, r, seed, the run directory below dataset/r/seed) of every planned run."""
    return [
        (run.dataset, run.iterations, run.seed, "/".join(run.run_dir.parts[-1:]))
        for run in sweep.runs
    ]


def test_paper_table1_plans_r_x_reconstruction_x_three_seeds(tmp_path: Path) -> None:
    sweep = plan(tmp_path, "experiment=paper_table1")
    expected = {
        ("mnist", r, seed, f"model.reconstruction={recon}")
        for r in (1, 3)
        for seed in (0, 1, 2)
        for recon in ("False", "True")
    }
    assert len(sweep.runs) == 12 and set(cells(sweep)) == expected
    assert sweep.grid["routing.iterations"] == ["1", "3"]
    assert sweep.grid["model.reconstruction"] == ["False", "True"]
    config = hydra_app.load_config(["experiment=paper_table1"])
    assert (config.dataset.train_size, config.dataset.shift, config.train.batch_size) == (
        None,
        2,
        128,
    )
    assert (config.train.lr, config.train.lr_decay_rate, config.train.lr_decay_steps) == (
        0.001,
        0.96,
        2000,
    )


def test_command_options_and_overrides_replace_a_presets_axes(tmp_path: Path) -> None:
    sweep = plan(tmp_path, "experiment=paper_table1", "model.reconstruction=true", seeds=[4])
    assert {(r, seed) for _, r, seed, _ in cells(sweep)} == {(1, 4), (3, 4)}
    assert all(run.run_dir.name == "s4" for run in sweep.runs)  # no reconstruction level
    sweep = plan(tmp_path, "experiment=paper_table1", "seed=7", iters=[2, 5])
    assert sorted({(r, seed) for _, r, seed, _ in cells(sweep)}) == [(2, 7), (5, 7)]
    assert len(sweep.runs) == 4  # x reconstruction false, true
    with pytest.raises(ConfigError, match=r"both set routing\.iterations"):
        plan(tmp_path, "experiment=paper_table1", "routing.iterations=1", iters=[3])


def test_paper_cifar10_is_seven_r3_models_in_the_papers_setup(tmp_path: Path) -> None:
    sweep = plan(tmp_path, "experiment=paper_cifar10", "dataset.verify=false")
    assert cells(sweep) == [("cifar10", 3, seed, f"s{seed}") for seed in range(7)]
    config = hydra_app.load_config(["experiment=paper_cifar10"])
    assert (config.dataset.crop, config.dataset.hflip, config.dataset.shift) == (24, True, 0)
    assert (config.model.primary_types, config.model.none_of_the_above) == (64, True)
    assert config.routing.iterations == 3


def test_quick_needs_iters_and_keeps_the_cpu_budget(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--iters is required"):
        plan(tmp_path, "experiment=quick")
    sweep = plan(tmp_path, "experiment=quick", iters=[1, 3, 5])
    assert cells(sweep) == [("mnist", r, 0, "s0") for r in (1, 3, 5)]
    config = hydra_app.load_config(["experiment=quick"])
    assert (config.dataset.train_size, config.dataset.test_size, config.train.epochs) == (
        5000,
        2000,
        3,
    )


def test_preset_dry_run_from_the_command_line(tmp_path: Path) -> None:
    result = run_cli("sweep", "experiment=paper_table1", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "total 12: done 0, will resume 0, new 12" in result.stdout
    assert "mnist/r3/s2/model.reconstruction=True" in result.stdout
    assert not (tmp_path / "outputs").exists()
    bad = run_cli("train", "experiment=paper_table2", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown experiment 'paper_table2'" in bad.stderr


def test_paper_affnist_trains_on_mnist40_and_chooses_epochs_on_validation(tmp_path: Path) -> None:
    sweep = plan(tmp_path, "experiment=paper_affnist")
    assert {(run.dataset, run.iterations) for run in sweep.runs} == {("mnist40", 1), ("mnist40", 3)}
    assert len(sweep.runs) == 6
    config = hydra_app.load_config(["experiment=paper_affnist"])
    assert (config.dataset.shift, config.dataset.val_size, config.dataset.test_size) == (
        6,
        5000,
        None,
    )
    assert config.train.early_stopping_patience is not None
    assert config.model.weight_std == 0.01  # mnist40's deviation, as MultiMNIST's
    cnn = hydra_app.load_config(["experiment=paper_affnist", "model=baseline_cnn"])
    assert (cnn.model.kind, cnn.dataset.name) == ("baseline_cnn", "mnist40")
