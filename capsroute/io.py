"""Atomic file writes and plain readers, shared by every layer that writes results.

Every file is replaced atomically (temporary file in the same directory, fsync, rename), so a
crash at any moment leaves either the old or the new version, never a half-written one.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from capsroute.errors import OutputWriteError, RunDirError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputWriteError(
            f"cannot write {path} ({os_reason(exc)}); its previous version is intact: "
            "free disk space or choose another out_root, then run the same command to resume"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rewrite a whole CSV file atomically (files are small: one row per epoch)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in columns})
    atomic_write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # full precision: resumed runs must reproduce numbers exactly
    return "" if value is None else value


def check_output_dir(folder: Path, option: str) -> Path:
    """Create `folder` and prove a file can be written there, before any work; `RunDirError`
    (one line, exit 2) naming the folder, the reason and the option that picks another."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(
            f"cannot write to {folder} ({os_reason(exc)}); choose another with {option}"
        ) from exc
    return folder


def check_output_file(path: Path, option: str) -> Path:
    """`check_output_dir` for a file's folder, and the file itself is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{path} is a directory; give a file name with {option}")
    check_output_dir(path.parent, option)
    return path


def os_reason(exc: OSError) -> str:
    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def utc_now() -> str:
    """The time stamp every record file uses (UTC, ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
