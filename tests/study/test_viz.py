"""`capsroute viz`: every figure is a valid PNG drawn from a tiny real run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capsroute.errors import RunDirError
from capsroute.hydra_app import load_config
from capsroute.run.train import train_run
from capsroute.study import viz
from tests.cli.test_cli import assert_one_line_error, run_cli


def tiny_run(tmp_path: Path, overrides: list[str], *extra: str) -> Path:
    run_dir = tmp_path / "run"
    config = load_config([*overrides, "train.epochs=1", "routing.iterations=2", *extra])
    train_run(config, run_dir)
    return run_dir


def assert_png(path: Path, min_size: tuple[int, int] = (200, 200)) -> None:
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path.name} is (nearly) blank"


def test_every_figure_is_written_from_a_tiny_real_run(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    run_dir = tiny_run(tmp_path, tiny_overrides)
    written = viz.make_figures(run_dir, examples=4)
    assert [p.name for p in written] == ["reconstructions.png", "perturbation.png", "coupling.png"]
    assert all(p.parent == run_dir / "viz" for p in written)
    for path in written:
        assert_png(path)

    run = viz.load_run(run_dir)
    maps = viz.coupling_coefficients(run.model, run.images[:1], 2)
    assert [tuple(c.shape) for c in maps] == [(4 * 6 * 6, 10)] * 2  # 4 types x 6x6 positions
    assert torch.allclose(maps[0], torch.full_like(maps[0], 0.1))  # iteration 1: uniform
    assert torch.allclose(maps[1].sum(dim=1), torch.ones(144))
    assert viz.PERTURBATIONS == (-0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def test_a_run_without_decoder_gets_the_coupling_figure_only(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    run_dir = tiny_run(tmp_path, tiny_overrides, "model.reconstruction=false")
    written = viz.make_figures(run_dir, out_dir=tmp_path / "pictures")
    assert [p.name for p in written] == ["coupling.png"]
    assert_png(tmp_path / "pictures" / "coupling.png")


def test_a_folder_without_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"no checkpoint\.pt"):
        viz.make_figures(tmp_path)
    result = run_cli("viz", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, 2, "has no checkpoint.pt: train the run first")
