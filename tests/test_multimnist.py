"""MultiMNIST generation: deterministic, two different classes, shifts within the canvas, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsroute.errors import DataError
from capsroute.multimnist import (
    MultiMNISTSpec,
    cache_path,
    fingerprint,
    load_or_generate,
    make_plan,
    render_parts,
    top2_correct,
)


def fake_mnist(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 'digits' (N, 1, 28, 28) uint8 with labels 0..9 cycling."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=generator, dtype=torch.uint8)
    return images, torch.arange(n) % 10


def test_generation_is_deterministic_and_pairs_two_different_digits(tmp_path: Path) -> None:
    images, labels = fake_mnist()
    spec = MultiMNISTSpec("train", size=300, seed=3)
    a = load_or_generate(images, labels, spec, tmp_path / "a")
    b = load_or_generate(images, labels, spec, tmp_path / "b")  # generated again, elsewhere
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (300, 1, 36, 36) and a.images.dtype == torch.uint8
    assert bool((a.labels[:, 0] != a.labels[:, 1]).all())
    assert torch.equal(a.labels[:, 0], labels[a.plan.first])
    assert torch.equal(a.labels[:, 1], labels[a.plan.second])
    assert int(a.plan.offsets.min()) == 0 and int(a.plan.offsets.max()) == 8  # -4 ... +4 px
    counts = torch.bincount(a.plan.first, minlength=50)  # every digit used 6 times
    assert bool((counts == 6).all())
    other = load_or_generate(images, labels, MultiMNISTSpec("train", 300, seed=4), tmp_path / "a")
    assert not torch.equal(other.images, a.images)


def test_overlay_is_the_max_of_the_two_shifted_digits(tmp_path: Path) -> None:
    images, labels = fake_mnist()
    spec = MultiMNISTSpec("test", size=20, seed=0)
    data = load_or_generate(images, labels, spec, tmp_path)
    parts = render_parts(images, data.plan, torch.arange(20), spec.canvas)  # (20, 2, 36, 36)
    assert torch.equal(parts.amax(dim=1, keepdim=True), data.images)
    k = 7
    top, left = data.plan.offsets[k, 1].tolist()
    digit = images[data.plan.second[k], 0]
    assert torch.equal(parts[k, 1, top : top + 28, left : left + 28], digit)
    assert int(parts[k, 1].sum()) == int(digit.sum())  # nothing else on its canvas


def test_cache_is_keyed_by_parameters_and_source_and_read_back(tmp_path: Path) -> None:
    images, labels = fake_mnist()
    spec = MultiMNISTSpec("test", size=40)
    first = load_or_generate(images, labels, spec, tmp_path)
    path = cache_path(tmp_path, spec, fingerprint(images, labels))
    assert path.is_file() and path.name.startswith("multimnist-test-")
    stamp = path.stat().st_mtime_ns
    again = load_or_generate(images, labels, spec, tmp_path)  # read, not regenerated
    assert path.stat().st_mtime_ns == stamp and torch.equal(again.images, first.images)
    assert torch.equal(again.plan.offsets, first.plan.offsets)
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert cache_path(tmp_path, spec, fingerprint(changed, labels)) != path
    assert cache_path(tmp_path, MultiMNISTSpec("test", 40, shift=3), "x") != cache_path(
        tmp_path, spec, "x"
    )


def test_unwritable_cache_is_a_data_error(tmp_path: Path) -> None:
    """A cache folder that cannot be made (here: below a file, unwritable even for root)."""
    images, labels = fake_mnist()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="writable folder"):
        load_or_generate(images, labels, MultiMNISTSpec("test", 5), tmp_path / "file" / "cache")


def test_top2_accuracy_needs_both_labels() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.1, 0.9, 0.2]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 2]])
    assert top2_correct(scores, labels).tolist() == [True, False, True]


def test_plan_on_real_mnist_labels(data_root: Path) -> None:
    from capsroute.config import DatasetConfig
    from capsroute.data import load_split

    test = load_split(DatasetConfig(root=str(data_root)), train=False)
    plan = make_plan(test.labels, MultiMNISTSpec("test", size=10000, seed=0))
    assert bool((plan.labels[:, 0] != plan.labels[:, 1]).all())
    assert torch.equal(plan.first.sort().values, torch.arange(10000))  # each digit once
