"""Fashion-MNIST, SVHN and smallNORB through the real `capsroute` entry point on tiny files:
training, evaluation, figures, parameter counts, sweeps and the missing-file message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from capsroute.cli.info import run_info
from capsroute.config import DATASETS, EVAL_ONLY_DATASETS
from capsroute.hydra_app import load_config
from tests.conftest import TINY_MODEL
from tests.data.formats import make_fashion_mnist, make_smallnorb, make_svhn


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The console-script entry point in this process (no interpreter start-up per call):
    (exit status, stdout, stderr)."""
    from capsroute.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["capsroute", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
    out, err = capsys.readouterr()
    return int(stopped.value.code or 0), out, err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """Exit status 2 and one `error:` line holding every needle, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(needle in lines[0] for needle in needles), lines[0]


MAKERS = {"fashion_mnist": make_fashion_mnist, "svhn": make_svhn, "smallnorb": make_smallnorb}


def tiny(root: Path, name: str) -> list[str]:
    """A one-epoch run of the dataset's own configuration (its conf/dataset group), tiny model."""
    return [
        f"dataset={name}",
        f"dataset.root={root}",
        "dataset.verify=false",  # the generated SVHN files cannot match the published md5s
        "dataset.train_eval_size=8",
        "train.epochs=1",
        "train.batch_size=10",
        "train.progress=false",
        "routing.iterations=2",
        *TINY_MODEL,
    ]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_each_dataset_trains_end_to_end_on_tiny_files(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    MAKERS[name](tmp_path / "data", n_train=20, n_test=10)
    code, _, err = run_main(capsys, "train", *tiny(tmp_path / "data", name), "run_name=run")
    assert code == 0, err[-2000:]
    run_dir = tmp_path / "outputs" / "runs" / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    if name != "smallnorb":
        return
    # the odd one out (2 channels, 5 classes, crops): evaluation and figures work on it too
    code, out, err = run_main(capsys, "evaluate", str(run_dir), "--iters", "1,2")
    assert code == 0 and "reproduced exactly" in out, err[-2000:]
    code, _, err = run_main(capsys, "viz", str(run_dir))
    assert code == 0, err[-2000:]
    assert (run_dir / "viz" / "reconstructions.png").is_file()


# name -> (input shape, primary capsules, parameters: total, without the decoder)
NETWORKS = {
    "mnist": ([1, 28, 28], 1152, 8_215_568, 6_804_224),
    "fashion_mnist": ([1, 28, 28], 1152, 8_215_568, 6_804_224),
    "svhn": ([3, 32, 32], 1024, 4_720_480, 1_004_896),
    "smallnorb": ([2, 32, 32], 2048, 9_327_104, 6_661_120),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_info_gives_each_datasets_network_and_parameter_count(tmp_path: Path, name: str) -> None:
    """The counts stated in the README ("Data"), from each dataset's own configuration.

    SVHN (64 conv1 channels, 16 x 6-D primary types, 8-D class capsules): conv1 3*81*64+64 =
    15,616; primary 64*81*96+96 = 497,760; W 1024*10*6*8 = 491,520; decoder 80->512->1024->3072
    = 3,715,584. smallNORB (MNIST's network on 2 x 32 x 32, 5 classes): conv1 41,728; primary
    5,308,672; W 2048*5*8*16 = 1,310,720; decoder 80->512->1024->2048 = 2,665,984.
    """
    if name in MAKERS:
        MAKERS[name](tmp_path, n_train=20, n_test=10)
    details = run_info(
        load_config([f"dataset={name}", f"dataset.root={tmp_path}", "dataset.verify=false"])
    )
    shape, primary, total, without_decoder = NETWORKS[name]
    assert (details["input_shape"], details["primary_capsules"]) == (shape, primary)
    assert details["parameters"] == {"total": total, "without_decoder": without_decoder}
    if name in MAKERS:
        assert (details["data"]["train"], details["data"]["test"]) == (20, 10)


def test_sweep_over_every_dataset_plans_with_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trainable = [name for name in DATASETS if name not in EVAL_ONLY_DATASETS]
    datasets = ",".join(trainable)
    code, out, err = run_main(
        capsys, "sweep", "--datasets", datasets, "--iters", "1,3", "--dry-run"
    )
    assert code == 0, err[-2000:]
    for name in trainable:
        assert f"{name}/r1/s0" in out and f"{name}/r3/s0" in out
    assert f"new {2 * len(trainable)}" in out
    assert not (tmp_path / "outputs" / "runs").exists()


def test_missing_files_name_the_file_and_the_download_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_smallnorb(tmp_path / "data", n_train=4, n_test=2)
    damaged = next((tmp_path / "data" / "smallnorb").glob("*training-dat.mat"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    code, _, err = run_main(capsys, "train", *tiny(tmp_path / "data", "smallnorb"))
    assert_one_line(
        code, err, f"smallnorb/{damaged.name}: ", "capsroute data download --dataset smallnorb"
    )
    code, _, err = run_main(capsys, "train", *tiny(tmp_path / "nothing", "svhn"))
    assert_one_line(code, err, "svhn not found under", "capsroute data download --dataset svhn")
