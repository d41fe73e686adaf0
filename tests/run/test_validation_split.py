"""Honest model selection: a seeded, class-balanced validation split that training never sees."""

from __future__ import annotations

import pytest
import torch

from capsroute.config import Config, DatasetConfig, TrainConfig
from capsroute.config_history import with_added_keys
from capsroute.data.batches import make_splits, train_val_indices
from capsroute.errors import ConfigError


def synthetic_labels(n: int = 1000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    """(n,) int64 labels with uneven class counts, as real datasets have."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=generator)


@pytest.mark.parametrize("train_size", [None, 300])
def test_validation_and_training_never_overlap(train_size: int | None) -> None:
    labels = synthetic_labels()
    train, val = train_val_indices(labels, train_size, 200, seed=4)
    assert val is not None
    assert len(val) == 200 and len(train) == (train_size or 800)
    assert not set(train.tolist()) & set(val.tolist())
    assert len(set(train.tolist())) == len(train)
    assert torch.bincount(labels[val], minlength=10).tolist() == [20] * 10  # class-balanced


def test_validation_split_depends_on_the_seed_only() -> None:
    labels = synthetic_labels()
    _, a = train_val_indices(labels, None, 100, seed=1)
    _, b = train_val_indices(labels, 300, 100, seed=1)  # another training size, same seed
    _, c = train_val_indices(labels, None, 100, seed=2)
    assert a is not None and b is not None and c is not None
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_without_validation_the_training_subset_is_unchanged() -> None:
    from capsroute.data.batches import balanced_subset

    labels = synthetic_labels()
    train, val = train_val_indices(labels, 300, None, seed=3)
    assert val is None
    assert torch.equal(train, balanced_subset(labels, 300, 3))


def test_validation_split_of_real_mnist_is_disjoint_from_training(data_root) -> None:
    cfg = DatasetConfig(root=str(data_root), train_size=500, val_size=200, test_size=100)
    splits = make_splits(cfg, seed=0, device=torch.device("cpu"))
    assert splits.val is not None and len(splits.val) == 200 and len(splits.train) == 500
    train_images = {bytes(img.numpy()) for img in splits.train.images}
    assert not any(bytes(img.numpy()) in train_images for img in splits.val.images)


def test_val_size_leaving_no_training_images_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="leaves no training images"):
        train_val_indices(synthetic_labels(n=50), None, 50, seed=0)


def test_early_stopping_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match=r"needs dataset\.val_size"):
        Config(train=TrainConfig(early_stopping_patience=2))
    Config(dataset=DatasetConfig(val_size=100), train=TrainConfig(early_stopping_patience=2))


def test_configs_saved_before_new_keys_read_as_their_defaults() -> None:
    saved = {"routing": {"iterations": 3, "grad": "all"}, "dataset": {"name": "mnist"}}
    filled = with_added_keys(saved)
    assert filled["routing"]["mode"] == "dynamic" and filled["dataset"]["val_size"] is None
    assert "mode" not in saved["routing"]  # the input is not modified


def test_a_checkpoint_saved_before_the_new_keys_still_resumes() -> None:
    import copy
    from pathlib import Path

    from capsroute.config import config_to_dict
    from capsroute.errors import CheckpointError
    from capsroute.run.train import check_resumable

    current = config_to_dict(Config())
    saved = copy.deepcopy(current)
    for section, key in (("routing", "mode"), ("routing", "temperature"), ("dataset", "val_size")):
        del saved[section][key]
    del saved["train"]["early_stopping_patience"]
    check_resumable(saved, current, Path("checkpoint.pt"))  # no error: same behaviour
    saved["routing"]["grad"] = "last"
    with pytest.raises(CheckpointError, match=r"routing\.grad"):
        check_resumable(saved, current, Path("checkpoint.pt"))
