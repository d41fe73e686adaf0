"""How saved run configs meet the current schema: the keys added since runs were first saved
(`with_added_keys`), and which keys may differ between a saved run and a re-run without
blocking a resume (`RESUMABLE_KEYS`, `resume_conflicts`)."""

from __future__ import annotations

import copy
from typing import Any

from capsroute.config_report import REPORT_KEYS
from capsroute.logger_config import BOOKKEEPING_PREFIX

# Keys added after runs were first saved: a config without one reads as if it held this value.
ADDED_KEYS: dict[str, Any] = {
    "routing.mode": "dynamic",
    "routing.temperature": 1.0,
    "dataset.val_size": None,
    "train.early_stopping_patience": None,
    "train.nonfinite": "fail",
    "model.kind": "capsnet",
    "model.cnn_channels": [256, 256, 128],
    "model.cnn_kernel": 5,
    "model.cnn_hidden": [328, 192],
    "model.cnn_dropout": 0.5,
    "dataset.overlay_shift": 4,
    "dataset.cache_dir": "outputs/cache",
    "model.standardize": False,
    "dataset.distort": "paper",
    "dataset.combine": "max",
    "model.padding": "valid",
    "model.primary_routing": False,
    "model.init": "torch",
    "model.loss_form": "paper",
    "routing.leaky": False,
    "train.lr_min": 0.0,
}


def with_added_keys(saved: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved (nested) config with every missing `ADDED_KEYS` entry filled in.

    Runs trained before a key existed behaved as its default says, so comparing their saved
    config with a current one must not report the new key as a change.
    """
    filled = copy.deepcopy(saved)
    for dotted, value in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = filled
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(leaf, copy.deepcopy(value))
    return filled


# Settings that may change between the first run and a resume without changing the results'
# meaning: more epochs, where the data and outputs live, how progress is shown.
RESUMABLE_KEYS = {
    "train.epochs",
    "train.progress",
    "train.threads",
    "train.eval_batch_size",
    "train.compile",
    "train.cuda_graph",
    "device",
    "dataset.root",
    "dataset.download",
    "dataset.on_device",
    "dataset.cache_dir",
    "out_root",
    "run_name",
    *REPORT_KEYS,
}


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs between two plain config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            item
            for key in sorted(set(old) | set(new))
            for item in config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys (`key: old -> new`) that make a saved run's config differ from `current`,
    beyond the `RESUMABLE_KEYS`; older runs' configs gain the keys added since."""
    return [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in config_diff(with_added_keys(saved), current)
        if key not in RESUMABLE_KEYS and not key.startswith(BOOKKEEPING_PREFIX)
    ]
