"""The run directory on disk: atomic file writes, an exclusive lock, and the result files.

Layout (written as the run goes): `.hydra/` (Hydra's resolved config and overrides),
`metrics.csv` (one row per epoch), `routing.csv` (one row per epoch and routing iteration),
`summary.json` (status and headline numbers), `checkpoint.pt` and `capsroute.log`.
Every file is replaced atomically (temporary file in the same directory, fsync, rename), so a
crash at any moment leaves either the old or the new version, never a half-written one.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capsroute.errors import OutputWriteError, RunDirError

METRICS_FILE = "metrics.csv"
ROUTING_FILE = "routing.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"

# metrics.csv: one row per epoch, in this column order.
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_margin_loss",
    "train_recon_loss",
    "train_acc",
    "train_eval_acc",
    "train_eval_loss",
    "test_acc",
    "test_loss",
    "test_margin_loss",
    "test_recon_loss",
    "val_acc",
    "val_loss",
    "lr",
    "epoch_seconds",
    "images_per_s",
    "eval_seconds",
)
# routing.csv: one row per epoch and routing iteration. Runs written before the polarisation and
# flip diagnostics existed have only the required columns.
ROUTING_REQUIRED = ("epoch", "iteration", "delta_b", "entropy", "max_c")
ROUTING_COLUMNS = (*ROUTING_REQUIRED, "polarised", "flip")

STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"


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
            f"cannot write {path} ({_reason(exc)}); its previous version is intact: "
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


def ensure_writable(run_dir: Path) -> None:
    """Create `run_dir` and prove it is writable, with a one-line error if it is not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = _reason(exc)
        raise RunDirError(
            f"cannot write to output directory {run_dir} ({reason}); "
            "choose another with out_root=DIR or hydra.run.dir=DIR"
        ) from exc


def _reason(exc: OSError) -> str:
    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` so that two processes never train into it at once.

    The lock is an `flock` on `run_dir/.lock`: the kernel releases it when the holder exits,
    even after SIGKILL, so a stale lock never blocks a resume.
    """
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"run directory {run_dir} is in use by {holder}; wait for it to finish "
                "or pick another run_name"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()
