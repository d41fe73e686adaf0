"""Checkpoints: atomic saves, `weights_only` loads, a content hash, and one-line errors.

Every checkpoint carries `sha256`, a digest of its whole content (every tensor's dtype, shape
and bytes, every other value's repr) computed when it is saved and checked when it is loaded,
so flipped bytes that still unzip are caught instead of trained on. Its structure (keys, the
training state's types and ranges) is checked too, so a foreign or hand-made file is named in
one line instead of failing later with a KeyError or a state_dict dump.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from capsroute.digest import DIGEST_KEY, content_digest
from capsroute.errors import CheckpointError
from capsroute.io import atomic_write_bytes
from capsroute.run.rundir import CHECKPOINT_FILE

if TYPE_CHECKING:
    from capsroute.config import Config

FORMAT_VERSION = 2  # 2: with `sha256`; 1 (no digest) is still read
READABLE_VERSIONS = (1, 2)
REQUIRED_KEYS = ("config", "model", "optimizer", "schedule", "scaler", "state")
# `capsroute.run.record.TrainState`'s fields
TRAIN_STATE_KEYS = {"epoch", "step", "metrics", "routing", "wall_seconds", "skipped_steps"}
_FIX = "move it away to restart this run from scratch, or restore a good copy"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise `state` with its digest in memory, then replace `path` atomically."""
    payload = {"format_version": FORMAT_VERSION, **state}
    payload[DIGEST_KEY] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; `weights_only=True`, so no code runs on load.

    Raises `CheckpointError` (one line naming the file and the fix) for a file that is damaged,
    foreign, or fails its digest.
    """
    try:
        with warnings.catch_warnings():  # torch warns (3 lines) about refused pickles
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a capsroute checkpoint ({_short(exc)}); {_FIX}"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has an unknown format; {_FIX}")
    if state["format_version"] >= 2 and state.get(DIGEST_KEY) != content_digest(state):
        raise CheckpointError(
            f"checkpoint {path} is damaged (its content does not match its sha256); {_FIX}"
        )
    problem = structure_problem(state)
    if problem:
        raise CheckpointError(
            f"checkpoint {path} is not a usable capsroute checkpoint ({problem}); {_FIX}"
        )
    return state


def structure_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a loaded checkpoint's keys and training state, or None."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict):
        return "config or model is not a mapping"
    if not all(isinstance(value, torch.Tensor) for value in state["model"].values()):
        return "model weights are not all tensors"
    train = state["state"]
    if not isinstance(train, dict):
        return "state is not a mapping"
    unknown = set(train) - TRAIN_STATE_KEYS
    if unknown:
        return f"unknown state field(s) {', '.join(sorted(map(str, unknown)))}"
    epoch, step = train.get("epoch"), train.get("step")
    if not _count(epoch) or not _count(step):
        return f"epoch {epoch!r} / step {step!r} are not counts >= 0"
    metrics, routing = train.get("metrics"), train.get("routing")
    if not isinstance(metrics, list) or len(metrics) != epoch or not isinstance(routing, list):
        return f"{epoch} epochs but {len(metrics) if isinstance(metrics, list) else 'no'} rows"
    if not isinstance(train.get("wall_seconds"), int | float):
        return "wall_seconds is not a number"
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path) -> None:
    """`model.load_state_dict`, with a one-line error for weights of another network."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} holds weights of another network ({_short(exc, 90)}); {_FIX}"
        ) from exc


def resume_from(
    checkpoint: dict[str, Any],
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Load every state of a checked checkpoint; a mismatch is one line naming the file."""
    load_weights(model, checkpoint["model"], path)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        scaler.load_state_dict(checkpoint["scaler"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} holds an optimizer state of another network "
            f"({_short(exc, 90)}); {_FIX}"
        ) from exc


def _short(exc: BaseException, width: int = 120) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return text[0][:width] if text else type(exc).__name__


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
    from capsroute.config import to_config
    from capsroute.config_history import with_added_keys
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
        saved["dataset"] = {**saved.get("dataset", {}), "root": str(data_root)}
    config = to_config(saved)
    model = build_model(config)
    load_weights(model, checkpoint["model"], path)
    model.eval()
    return TrainedRun(config, model, dict(checkpoint.get("state") or {}))
