"""Checkpoints: atomic saves, `weights_only` loads, and one-line errors for damaged files."""

from __future__ import annotations

import io
import pickle
import zipfile
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


def load_trained(run_dir: Path, data_root: Path | None = None) -> tuple[Config, torch.nn.Module]:
    """The config and the network (eval mode, CPU) saved in `run_dir/checkpoint.pt`.

    The config is the one stored with the weights; `data_root` replaces its `dataset.root`
    (runs move between machines). Used by `capsroute viz` and the ensemble evaluation.
    """
    from capsroute.config import to_config
    from capsroute.errors import RunDirError
    from capsroute.nn import build_model

    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT_FILE}: train the run first")
    state = load_checkpoint(path)
    saved: dict[str, Any] = dict(state["config"])
    if data_root is not None:
        saved["dataset"] = {**saved["dataset"], "root": str(data_root)}
    config = to_config(saved)
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    return config, model
