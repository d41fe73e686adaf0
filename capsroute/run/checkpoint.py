"""Checkpoints: atomic saves, `weights_only` loads, and one-line errors for damaged files."""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from capsroute.errors import CheckpointError
from capsroute.io import atomic_write_bytes
from capsroute.run.rundir import CHECKPOINT_FILE

if TYPE_CHECKING:
    from capsroute.config import Config

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise `state` in memory, then replace `path` atomically."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no arbitrary code runs on load)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a capsroute checkpoint ({_short(exc)}); "
            "move it away to restart this run from scratch, or restore a good copy"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has an unknown format; move it away to restart this run"
        )
    return state


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


@dataclass
class TrainedRun:
    """A trained run read back from its checkpoint: the typed config it trained with (keys added
    since filled with their defaults), the network with its weights (eval mode, CPU), and the
    loop's saved state (epochs, metrics rows)."""

    config: Config
    model: torch.nn.Module
    state: dict[str, Any]


def load_run(run_dir: Path, data_root: Path | None = None) -> TrainedRun:
    """The one loader of a trained run (`capsroute evaluate`, `viz`, `ensemble`).

    `data_root` replaces the config's `dataset.root` (runs move between machines).
    """
    from capsroute.config import to_config, with_added_keys
    from capsroute.errors import RunDirError
    from capsroute.nn import build_model

    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT_FILE}: train the run first")
    checkpoint = load_checkpoint(path)
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no config; move it away or retrain")
    saved = with_added_keys(saved)
    if data_root is not None:
        saved["dataset"] = {**saved["dataset"], "root": str(data_root)}
    config = to_config(saved)
    model = build_model(config)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return TrainedRun(config, model, dict(checkpoint.get("state") or {}))
