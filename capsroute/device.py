"""Device and numeric-precision selection: `device=auto` picks CUDA, then MPS, then the CPU."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from capsroute.errors import ConfigError

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """Turn `auto | cpu | cuda | cuda:N | mps` into an available device, or explain why not."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} requested but no CUDA GPU is visible; use device=auto or device=cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device={name} requested but only {count} CUDA device(s) exist")
    if device.type == "mps" and not _mps_available():
        raise ConfigError("device=mps requested but MPS is not available; use device=auto or cpu")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """Mixed precision for the forward pass: fp32 runs as is, bf16/fp16 under torch.autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16, whose gradients can underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def device_description(device: torch.device) -> str:
    """A human-readable name of the device (GPU model, or CPU thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
