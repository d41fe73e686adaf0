"""`capsroute evaluate RUN --dataset ...`: a trained run scored on another test set (Section 5.2).

Three tiny runs are trained once per module on the real MNIST files: a CapsNet and the baseline
CNN on mnist40 (40x40), and a CapsNet on plain MNIST (28x28, for the shape refusal).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest

from capsroute.data import batches, viewpoint
from capsroute.data.viewpoint import evaluation_set
from capsroute.hydra_app import load_config
from capsroute.run.rundir import EVAL_CROSS_FILE, EVAL_ITERS_FILE
from capsroute.run.train import train_run
from tests.conftest import shared_data_root, tiny_run_overrides
from tests.data.test_affnist import write_affnist

MNIST40 = ["dataset=mnist40", "train.epochs=1", "routing.iterations=2"]
RUNS = {
    "caps40": MNIST40,
    "cnn40": [
        *MNIST40,
        "model=baseline_cnn",
        "model.cnn_channels=[4,4,4]",
        "model.cnn_hidden=[16]",
    ],
    "mnist": ["train.epochs=1", "dataset.train_size=64", "dataset.test_size=64"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = shared_data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real datasets not found under {root} (set CAPSROUTE_DATA)")
    folder = tmp_path_factory.mktemp("cross")
    cache: dict[bool, Any] = {}
    real_load_split = viewpoint.load_split

    def load_once(cfg: Any, train: bool) -> Any:  # one MNIST read for all three runs
        if train not in cache:
            cache[train] = real_load_split(cfg, train)
        return cache[train]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(viewpoint, "load_split", load_once)
        patch.setattr(batches, "load_split", load_once)
        for name, overrides in RUNS.items():
            extra = [f"out_root={folder}"]
            train_run(load_config([*tiny_run_overrides(root), *overrides, *extra]), folder / name)
    return {name: folder / name for name in RUNS}


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The console-script entry point in this process: (exit status, stdout, stderr)."""
    from capsroute.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["capsroute", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
    out = capsys.readouterr()
    return int(stopped.value.code or 0), out.out, out.err


def rows(run: Path) -> list[dict[str, Any]]:
    with open(run / EVAL_CROSS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def test_own_set_reproduces_and_other_sets_are_added_without_touching_own_results(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["caps40"]
    code, out, err = run_main(
        ["evaluate", str(run), "--dataset", "mnist40", "--iters", "2"], capsys
    )
    assert code == 0, err
    (own,) = rows(run)
    # mnist40's test set is the run's own test set: the same accuracy, bit for bit
    assert own["dataset"] == "mnist40" and own["accuracy"] == own["own_test_acc"]
    code, out, err = run_main(
        ["evaluate", str(run), "--dataset", "affine_mnist", "--iters", "1,2"], capsys
    )
    assert code == 0, err
    assert "on affine_mnist" in out and "drop" in out
    got = {(row["dataset"], row["eval_r"]): row for row in rows(run)}
    assert set(got) == {("mnist40", "2"), ("affine_mnist", "1"), ("affine_mnist", "2")}
    assert got[("affine_mnist", "2")]["own_test_acc"] == own["own_test_acc"]
    assert got[("affine_mnist", "1")]["own_test_acc"] == ""  # not the run's own routing
    assert int(got[("affine_mnist", "2")]["images"]) == 128
    assert not (run / EVAL_ITERS_FILE).exists()


def test_affnist_files_are_read_in_the_published_layout(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An affNIST test file holding exactly the run's own test images scores what they score."""
    from capsroute.run.checkpoint import load_run

    run = runs["caps40"]
    config = load_run(run).config
    own = evaluation_set(config.dataset, "mnist40", config.seed)
    images = own.images[:, 0].numpy()
    write_affnist(tmp_path / "affNIST/transformed/test.mat", images, own.labels.numpy(), True)
    code, _, err = run_main(
        [
            "evaluate",
            str(run),
            "--dataset",
            "affnist",
            "--iters",
            "2",
            "--data-root",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    row = next(r for r in rows(run) if r["dataset"] == "affnist")
    assert row["accuracy"] == row["own_test_acc"]


def test_the_baseline_cnn_is_scored_once_without_routing(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["cnn40"]
    code, _, err = run_main(["evaluate", str(run), "--dataset", "affine_mnist"], capsys)
    assert code == 0, err
    (row,) = rows(run)  # one row: the CNN has no r to vary
    assert row["own_test_acc"] != "" and row["dataset"] == "affine_mnist"


@pytest.mark.parametrize(
    ("run", "args", "message"),
    [
        (
            "mnist",
            ["--dataset", "affnist"],
            "trained on mnist images of shape 1x28x28, but affnist",
        ),
        ("mnist", ["--dataset", "mnist40"], "1x40x40: train on dataset=mnist40 first"),
        ("caps40", ["--dataset", "svhn"], "--dataset: unknown dataset 'svhn'"),
        ("caps40", ["--dataset", "affnist", "--split", "val"], "drop --split"),
        ("caps40", ["--dataset", "affnist", "--data-root", "/nonexistent"], "affnist not found"),
    ],
)
def test_bad_requests_are_refused_in_one_line_and_write_nothing(
    runs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    run: str,
    args: list[str],
    message: str,
) -> None:
    path = runs[run]
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    code, _, err = run_main(["evaluate", str(path), *args], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    after = {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}


def test_viz_draws_the_transformed_digits(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["viz", str(runs["caps40"]), "--dataset", "affine_mnist", "--examples", "2"], capsys
    )
    assert code == 0, err
    folder = runs["caps40"] / "viz" / "affine_mnist"
    assert (folder / "reconstructions.png").stat().st_size > 0
    assert str(folder / "coupling.png") in out
