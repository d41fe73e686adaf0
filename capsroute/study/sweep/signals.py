"""SIGTERM to a sweep stops the whole sweep, its parallel workers included.

Without this, SIGTERM ends the sweep process at once: joblib's worker processes are left
training under PID 1, holding their runs' locks, and `sweep.json` says "running" for ever.
`stop_workers_on_sigterm` first forwards SIGTERM to every process this one started (each
worker's training loop then marks its run interrupted and releases its lock) and waits for
them, then stops the sweep as Ctrl-C does (it records "interrupted" in `sweep.json`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger("capsroute")

WORKER_GRACE_S = 30.0  # how long stopped workers get to save their state before SIGKILL


@contextmanager
def stop_workers_on_sigterm() -> Iterator[None]:
    """SIGTERM -> KeyboardInterrupt here; child processes are stopped before leaving."""

    def handler(signum: int, _frame: object) -> None:
        stop_children()  # workers save their state and release their locks first
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        stop_children()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux `/proc/<pid>/task/*/children`), children first."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except (OSError, ValueError):
            continue
    return found + [grandchild for child in found for grandchild in descendants(child)]


def stop_children(grace_s: float = WORKER_GRACE_S) -> None:
    """SIGTERM every descendant, wait up to `grace_s` for them to exit, then SIGKILL."""
    pids = [pid for pid in descendants(os.getpid()) if not _is_helper(pid)]
    for pid in pids:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            log.warning("worker %d did not stop in %.0f s: killed", pid, grace_s)
            _send(pid, signal.SIGKILL)


def _is_helper(pid: int) -> bool:
    """joblib's resource tracker cleans up after the workers itself; it is left alone."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _send(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie of ours is reaped, and counts as gone)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our direct child: ask the kernel
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
