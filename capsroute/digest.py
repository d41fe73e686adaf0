"""A content hash of saved tensors and values: recorded when a file is written, checked when
it is read (checkpoints, the MultiMNIST cache), so damaged bytes that still load are caught."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

DIGEST_KEY = "sha256"  # where a saved dict keeps the digest of the rest of itself


def content_digest(payload: dict[str, Any]) -> str:
    """sha256 over everything in `payload` except `DIGEST_KEY`, in a fixed order: every
    tensor's dtype, shape and bytes, every other value's repr."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in payload.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())
