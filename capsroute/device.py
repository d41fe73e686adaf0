"""Device and numeric-precision selection: `device=auto` picks CUDA, then MPS, then the CPU."""

from __future__ import annotations

import contextlib
import ctypes
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


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 or AMX).

    Without them (e.g. an AVX2-only CPU) bf16 convolutions are emulated and run many times
    slower than fp32, so precision=bf16 on such a CPU is a pessimisation, not a speed-up.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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


# glibc mallopt parameters (malloc.h); mallopt takes a C int value.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_KEEP_FREED_BYTES = 2**31 - 1  # largest C int: never trim the heap top back to the OS
_TOP_PAD_BYTES = 256 << 20  # grow the heap 256 MiB at a time
_allocator_tuned = False


def keep_cpu_memory_mapped() -> bool:
    """Stop glibc from handing big tensors' memory back to the OS after every free (CPU only).

    By default glibc serves allocations >= 32 MiB with fresh `mmap`s and unmaps them on free,
    so each new (B, 1152, 10, 16) routing tensor (94 MB at batch 128) is paid again in page
    faults: a copy of it costs ~5x its memory-bandwidth time. With mmap allocation disabled
    (M_MMAP_MAX=0), a trim threshold of 2 GiB and a 256 MiB top pad, freed blocks stay in the
    heap and are reused by the next step; the price is that the process keeps its peak heap.
    Idempotent; returns whether glibc accepted the settings (False off glibc, e.g. macOS).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_MMAP_MAX, 0),
                (_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES),
                (_M_TOP_PAD, _TOP_PAD_BYTES),
            )
        )
    except (OSError, AttributeError):  # no glibc
        return False
    _allocator_tuned = ok
    return ok


def release_cpu_memory() -> None:
    """Give the heap's free pages back to the OS (glibc `malloc_trim`), e.g. between benchmarks."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
