"""`capsroute info`: what a config means (model size, data, device) without training."""

from __future__ import annotations

from typing import Any

from capsroute.config import Config, config_to_dict
from capsroute.data.batches import input_shape, make_splits
from capsroute.device import device_description, resolve_device
from capsroute.errors import DataError
from capsroute.nn import build_model
from capsroute.nn.capsnet import CapsNet


def run_info(config: Config) -> dict[str, Any]:
    """Parameter counts, input shape, dataset sizes and the chosen device for `config`."""
    shape = input_shape(config.dataset)
    model = build_model(config)  # the CapsNet or, with model=baseline_cnn, the baseline CNN
    device = resolve_device(config.device)
    details: dict[str, Any] = {
        "dataset": config.dataset.name,
        "input_shape": list(shape),
        "model": config.model.kind,
        "routing_iterations": config.routing.iterations,
        "primary_capsules": model.digit.n_in if isinstance(model, CapsNet) else None,
        "parameters": model.parameter_counts(),
        "device": str(device),
        "device_name": device_description(device),
    }
    try:
        splits = make_splits(config.dataset, config.seed, device="cpu")  # type: ignore[arg-type]
        details["data"] = {
            "root": config.dataset.root,
            "train": len(splits.train),
            "train_eval": len(splits.train_eval),
            "test": len(splits.test),
        }
        if splits.val is not None:
            details["data"]["val"] = len(splits.val)
    except DataError as exc:
        details["data"] = {"root": config.dataset.root, "error": str(exc)}
    details["config"] = config_to_dict(config)
    return details


def flatten_details(details: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`run_info`'s nested dict as (dotted key, value) rows for a table; the config left out."""
    rows: list[tuple[str, Any]] = []
    for key, value in details.items():
        if key == "config":
            continue
        if isinstance(value, dict):
            rows += flatten_details(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows
