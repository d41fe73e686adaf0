"""Parsers of the command-line options that take lists: one rule and one error wording for every
command (`sweep --iters`, `evaluate --iters`, `bench --iters/--batch-size/--precision`, ...).

Bad input raises `ConfigError`: one line on stderr, exit status 2, before any work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from capsroute.config import DATASETS, PRECISIONS, VIEWPOINT_DATASETS
from capsroute.errors import ConfigError


def parse_int(text: str, option: str, minimum: int) -> int:
    """One integer >= `minimum` (typer's own int parsing prints a multi-line box)."""
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text) or int(text) < minimum:
        raise ConfigError(f"{option} needs one integer >= {minimum}, got '{text}'")
    return int(text)


def parse_int_list(text: str, option: str, minimum: int) -> list[int]:
    """`"1,3,5"` -> `[1, 3, 5]`: integers >= `minimum`, no duplicates, not empty."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{option} needs a comma-separated list of integers, got '{text}'")
    values: list[int] = []
    for item in items:
        if not re.fullmatch(r"[+-]?\d+", item) or int(item) < minimum:
            raise ConfigError(f"{option}: '{item}' is not an integer >= {minimum}")
        values.append(int(item))
    _no_duplicates(option, items, values)
    return values


def parse_choice_list(text: str, option: str, choices: Sequence[str], what: str) -> list[str]:
    """`"a,b"` -> names from `choices`, no duplicates, not empty (`what` names one item)."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"{option} needs a comma-separated list, got '{text}'")
    for item in items:
        if item not in choices:
            raise ConfigError(
                f"{option}: unknown {what} '{item}'; choose from {', '.join(choices)}"
            )
    _no_duplicates(option, items, items)
    return items


def parse_dataset_list(text: str, option: str = "--datasets") -> list[str]:
    """`"mnist,cifar10"` -> known dataset names, no duplicates, not empty."""
    return parse_choice_list(text, option, DATASETS, "dataset")


def parse_precisions(text: str) -> list[str]:
    """`"fp32,bf16"` -> supported precisions, no duplicates, not empty."""
    return parse_choice_list(text, "--precision", PRECISIONS, "precision")


def parse_choice(text: str, option: str, choices: Sequence[str], what: str) -> str:
    """One name from `choices` (e.g. `--split test`)."""
    if text not in choices:
        raise ConfigError(f"{option}: unknown {what} '{text}'; choose one of: {', '.join(choices)}")
    return text


def _no_duplicates(option: str, items: Sequence[str], values: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for item, value in zip(items, values, strict=True):
        if value in seen:
            raise ConfigError(f"{option}: '{item}' is listed twice")
        seen.add(value)


def parse_other_dataset(text: str | None, split: str = "test") -> str | None:
    """`evaluate/viz --dataset`: another test set of the run's shape (Section 5.2), or None.

    It replaces the run's own data, so it cannot be combined with `--split val|train`.
    """
    if text is None:
        return None
    if split != "test":
        raise ConfigError("--dataset scores another set's test images: drop --split")
    return parse_choice(text, "--dataset", VIEWPOINT_DATASETS, "dataset")


def split_overrides(args: list[str]) -> list[str]:
    """Extra arguments are Hydra overrides (`key=value`); anything else is a typo."""
    for arg in args:
        if arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}'; see `capsroute --help`")
        if "=" not in arg:
            raise ConfigError(f"'{arg}' is not an override; write key=value (e.g. seed=1)")
    return args
