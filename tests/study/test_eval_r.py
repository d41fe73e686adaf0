"""`capsroute evaluate` and validation-split training on tiny real MNIST runs.

Three runs are trained once per module (tiny model, a few seconds each): dynamic routing with
r = 2 and the random-coupling control (1 epoch), and r = 1 with a validation split (2 epochs).
Evaluating a run at its own routing must repeat its recorded final accuracy bit for bit.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from capsroute.data import batches as data
from capsroute.hydra_app import load_config
from capsroute.run.record import stops_early
from capsroute.run.rundir import EVAL_COLUMNS, EVAL_ITERS_FILE
from capsroute.run.train import train_run
from capsroute.study.eval_r import evaluate_run
from tests.cli.test_cli import run_cli
from tests.conftest import shared_data_root, tiny_run_overrides

RUNS = {
    "dynamic": ["routing.iterations=2", "train.epochs=1"],
    "random": [
        "routing.iterations=1", "routing.mode=random", "routing.temperature=0.5", "train.epochs=1"
    ],
    "val": ["routing.iterations=1", "dataset.val_size=100"],
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The RUNS, trained into <tmp>/<name>; they share one MNIST read."""
    root = shared_data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real datasets not found under {root} (set CAPSROUTE_DATA)")
    folder = tmp_path_factory.mktemp("runs")
    cache: dict[bool, Any] = {}
    real_load_split = data.load_split

    def load_once(cfg: Any, train: bool) -> Any:
        if train not in cache:
            cache[train] = real_load_split(cfg, train)
        return cache[train]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_split", load_once)
        for name, overrides in RUNS.items():
            train_run(load_config([*tiny_run_overrides(root), *overrides]), folder / name)
    return {name: folder / name for name in RUNS}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def test_evaluation_at_the_training_r_reproduces_the_final_accuracy_exactly(
    runs: dict[str, Path],
) -> None:
    run = runs["dynamic"]
    result = evaluate_run(run, [1, 2, 4], "test")
    final = read_rows(run / "metrics.csv")[-1]
    own = result.reference
    assert own is not None and own["eval_r"] == 2
    assert own["accuracy"] == summary(run)["final_test_acc"] == float(final["test_acc"])
    assert own["loss"] == float(final["test_loss"])
    assert own["recorded_acc"] == own["accuracy"]
    rows = read_rows(run / EVAL_ITERS_FILE)
    assert list(rows[0]) == list(EVAL_COLUMNS)
    assert [r["eval_r"] for r in rows] == ["1", "2", "4"]
    assert {r["mode"] for r in rows} == {"dynamic"}
    assert rows[0]["flip_first"] == "0.0"  # eval r = 1: nothing to change
    routing = read_rows(run / "eval_routing.csv")
    assert [(r["eval_r"], r["iteration"]) for r in routing] == [
        ("1", "1"), ("2", "1"), ("2", "2"), ("4", "1"), ("4", "2"), ("4", "3"), ("4", "4")
    ]  # fmt: skip
    assert float(routing[1]["flip"]) == own["flip_first"] and routing[2]["flip"] == "0.0"


def test_random_control_reproduces_and_is_also_evaluated_with_routing(
    runs: dict[str, Path],
) -> None:
    run = runs["random"]
    result = evaluate_run(run, [1, 3], "test")
    own = result.reference
    assert own is not None and own["mode"] == "random" and own["eval_r"] == 1
    assert own["accuracy"] == summary(run)["final_test_acc"]
    assert [(row["mode"], row["eval_r"]) for row in result.rows] == [
        ("dynamic", 1), ("dynamic", 3), ("random", 1)
    ]  # fmt: skip
    assert (result.rows[-1]["max_c"]) > 0.2  # temperature 0.5: far from uniform 0.1


def test_validation_split_is_evaluated_each_epoch_and_chooses_the_best_epoch(
    runs: dict[str, Path],
) -> None:
    run = runs["val"]
    metrics = read_rows(run / "metrics.csv")
    assert all(row["val_acc"] and row["val_loss"] and row["val_margin_loss"] for row in metrics)
    routing = read_rows(run / "routing.csv")  # r = 1: one iteration, its update not applied
    assert {row["split"] for row in routing} == {"val"}
    assert [row["delta_b"] for row in routing] == ["", ""]
    saved = summary(run)
    assert saved["data_sizes"]["train"] == 256
    best = max(metrics, key=lambda row: float(row["val_acc"]))
    assert saved["val_best_epoch"] == int(best["epoch"])
    assert saved["test_acc_at_val_best"] == float(best["test_acc"])
    assert saved["stopped_early"] is False
    result = evaluate_run(run, [1], "val")
    assert result.rows[0]["accuracy"] == float(metrics[-1]["val_acc"])
    # a later test-split evaluation keeps the val rows of the same epoch
    evaluate_run(run, [1], "test")
    assert [row["split"] for row in read_rows(run / EVAL_ITERS_FILE)] == ["test", "val"]


def test_early_stopping_waits_patience_epochs_after_the_best_validation_accuracy() -> None:
    def rows(*vals: float) -> list[dict[str, Any]]:
        return [{"epoch": k + 1, "val_acc": v} for k, v in enumerate(vals)]

    assert not stops_early(rows(0.5, 0.6, 0.6), 2)  # best at epoch 2 (first of the tie)
    assert stops_early(rows(0.5, 0.6, 0.6, 0.55), 2)
    assert not stops_early(rows(0.5, 0.6, 0.6, 0.55), None)
    assert not stops_early([{"epoch": 1, "val_acc": None}], 1)


def test_cli_evaluate_writes_eval_iters_and_says_it_reproduced(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli("evaluate", str(runs["dynamic"]), "--iters", "2,3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "reproduced exactly" in result.stdout
    assert (runs["dynamic"] / EVAL_ITERS_FILE).is_file()


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The console-script entry point in this process (no interpreter start-up per case)."""
    from capsroute.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["capsroute", "evaluate", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
    return int(stopped.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-run"], "no such run directory"),
        (["empty"], "holds no checkpoint.pt"),
        (["RUN", "--iters", "0,2"], "--iters: '0' is not an integer >= 1"),
        (["RUN", "--iters", "2,x"], "--iters: 'x' is not an integer"),
        (["RUN", "--split", "dev"], "--split: unknown split 'dev'"),
        (["RUN", "--split", "val"], "has no validation split"),
        ([], "give at least one RUN_DIR"),
    ],
)
def test_cli_evaluate_bad_input_is_one_line(
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    before = (runs["dynamic"] / "checkpoint.pt").stat().st_mtime_ns
    code, stderr = run_main([str(runs["dynamic"]) if a == "RUN" else a for a in args], capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert (runs["dynamic"] / "checkpoint.pt").stat().st_mtime_ns == before
