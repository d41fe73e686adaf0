"""`capsroute report` end to end: a tiny real sweep trained here, through the real entry point.

Four real runs (MNIST, r in {1, 2} x seeds {0, 1}, tiny model, 2 epochs) are trained once
per module with `train_run` into the sweep layout `<dataset>/r<r>/s<seed>/`; train_run writes
no `.hydra/` folder, so this also covers reading the config from summary.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from capsroute.data import batches as data
from capsroute.hydra_app import load_config
from capsroute.run.train import train_run
from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.conftest import TINY_MODEL, shared_data_root
from tests.report.fixtures import metrics_rows, run_config, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "test_acc_vs_r.png",
    "test_acc_curves.png",
    "gap_curves.png",
    "train_loss.png",
    "routing_delta_b.png",
    "routing_entropy.png",
)
REPORT_FILES = (
    "runs.csv",
    "routing_runs.csv",
    "per_run.csv",
    "summary.csv",
    "comparison.csv",
    "warnings.csv",
    "summary.md",
    "summary.tex",
    "comparison.tex",
    "report.md",
    "report.html",
)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """outputs/sweeps/tiny/mnist/r{1,2}/s{0,1}: real training, a few seconds per run."""
    root = shared_data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real datasets not found under {root} (set CAPSROUTE_DATA)")
    cwd = tmp_path_factory.mktemp("project")
    sweep = cwd / "outputs" / "sweeps" / "tiny"
    base = [
        f"dataset.root={root}",
        "dataset.train_size=64",
        "dataset.test_size=64",
        "dataset.train_eval_size=32",
        "train.batch_size=32",
        "train.eval_batch_size=128",
        "train.epochs=2",
        "train.progress=false",
        *TINY_MODEL,
    ]
    splits: dict[bool, Any] = {}

    def load_once(cfg: Any, train: bool) -> Any:  # the four runs share one MNIST read
        if train not in splits:
            splits[train] = real_load_split(cfg, train)
        return splits[train]

    real_load_split = data.load_split
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_split", load_once)
        for r in (1, 2):
            for seed in (0, 1):
                config = load_config([*base, f"routing.iterations={r}", f"seed={seed}"])
                train_run(config, sweep / "mnist" / f"r{r}" / f"s{seed}")
    return sweep


def test_report_writes_every_file_and_readable_figures(tiny_sweep: Path) -> None:
    cwd = tiny_sweep.parents[2]
    result = run_cli("report", cwd=cwd)  # default PATH: the newest sweep
    assert result.returncode == 0, result.stderr
    out = tiny_sweep / "report"
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        path = out / "figures" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            width, height = image.size
            assert 500 <= width <= 2500 and 350 <= height <= 1500, (name, image.size)
            extrema = image.convert("L").getextrema()
            assert extrema[1] - extrema[0] > 100, name  # drawn on, not blank
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 * 2 and sorted(runs["r"].unique()) == [1, 2]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["n"].tolist() == [2, 2]
    assert pd.read_csv(out / "comparison.csv")["n_pairs"].tolist() == [2]
    assert "final epoch: mean ± std over seeds" in result.stdout
    assert f"report written to {out}" in result.stdout.replace("\n", "")


def test_report_lists_a_failed_run_and_still_reports(tiny_sweep: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep / "mnist", sweep / "mnist")
    (sweep / "mnist/r2/s1/routing.csv").unlink()
    result = run_cli("report", str(sweep), "--out", "rep", "--format", "csv,md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "runs left out" in result.stdout and "routing.csv missing" in result.stdout
    assert (tmp_path / "rep" / "report.md").is_file()
    assert not (tmp_path / "rep" / "report.html").exists()  # html not requested
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert summary["n"].tolist() == [2, 1]


BAD_REPORT_INPUTS = [
    (["report", "."], "no run directories"),
    (["report"], "no sweeps under"),
    (["report", "nowhere"], "no such path: nowhere"),
    (["report", ".", "--format", "pdf"], "unknown --format"),
    (["report", ".", "--metric", "loss"], "unknown --metric 'loss'"),
    (["report", ".", "report.reference_r=0"], "report.reference_r must be > 0"),
    (["report", "report.nope=1"], "unknown config key 'report.nope'"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_REPORT_INPUTS, ids=[" ".join(a) for a, _ in BAD_REPORT_INPUTS]
)
def test_bad_report_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert_one_line_error(run_cli(*args, cwd=tmp_path), 2, message)


def test_report_finds_sweeps_under_the_configured_out_root(tmp_path: Path) -> None:
    """With no PATH, the newest sweep under OUT_ROOT/sweeps/ (not ./outputs) is reported;
    report.reference_r from the command line picks the reference of the comparisons."""
    elsewhere = tmp_path / "elsewhere"
    for r in (1, 2):
        rows = metrics_rows([0.8, 0.9], [0.9, 0.95], [0.3, 0.2])
        write_run(elsewhere / "sweeps" / "s" / f"r{r}", run_config("mnist", r, 0, 2), rows)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ("report", f"out_root={elsewhere}", "report.reference_r=2", "--format", "md")
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    text = (elsewhere / "sweeps" / "s" / "report" / "report.md").read_text()
    assert "reference r=2: report.reference_r=2" in text
    assert_one_line_error(run_cli("report", cwd=cwd), 2, f"no sweeps under {cwd}/outputs/sweeps")
