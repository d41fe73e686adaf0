"""A dataset group's own settings are not swept axes of a report over several datasets."""

from __future__ import annotations

from capsroute.report.runset import swept_axes


def test_only_keys_that_vary_within_a_dataset_are_axes() -> None:
    configs = [
        {"dataset.name": "mnist", "dataset.crop": None, "model.digit_dim": 16, "seed": 0,
         "routing.grad": "all"},
        {"dataset.name": "mnist", "dataset.crop": None, "model.digit_dim": 16, "seed": 1,
         "routing.grad": "last"},
        {"dataset.name": "svhn", "dataset.crop": None, "model.digit_dim": 8, "seed": 0,
         "routing.grad": "all"},
        {"dataset.name": "smallnorb", "dataset.crop": 32, "model.digit_dim": 16, "seed": 0,
         "routing.grad": "all"},
    ]  # fmt: skip
    assert swept_axes(configs) == ["routing.grad"]
    assert swept_axes(configs[2:]) == []
