"""Sharing one GPU between the packed runs of a sweep (`--jobs-per-gpu K`) through CUDA MPS.

Without MPS the K processes on a GPU are time-sliced: kernels of different processes never run
at the same time, so packing only fills the gaps each run leaves (data loading, evaluation,
checkpoints, Python). With the Multi-Process Service their kernels share the multiprocessors,
which is what a CapsNet's many small kernels need. The daemon is private to the sweep: its pipe
and log folders live under the sweep folder, set in the environment before the launcher starts
its worker processes (they inherit it), and it is told to quit when the sweep ends. Nothing about
the GPU's own settings is changed. Where the control binary is missing, or a daemon is already
configured (`CUDA_MPS_PIPE_DIRECTORY` set), or it will not start, the sweep runs without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("capsroute")

MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_FOLDER = ".mps"  # under the sweep folder: pipe/ and log/
_PIPE, _LOG = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
_TIMEOUT_S = 30


def stop_idle_workers() -> None:
    """End the joblib launcher's idle worker processes now. loky keeps them (and their CUDA
    contexts) alive for minutes after the sweep, and MPS's `quit` waits for every client."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:
        return
    executor = getattr(reusable_executor, "_executor", None)  # None: no pool was started
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


@contextmanager
def mps_daemon(root: Path, wanted: bool) -> Iterator[bool]:
    """Run the body with a private MPS daemon when `wanted` and possible; yields whether one
    runs. The environment is restored and the daemon told to quit afterwards."""
    control = shutil.which(MPS_CONTROL)
    if not wanted or control is None or os.environ.get(_PIPE):
        if wanted and control is None:
            log.info("%s not found: packed runs share the GPU by time-slicing", MPS_CONTROL)
        yield False
        return
    pipe, logs = root / MPS_FOLDER / "pipe", root / MPS_FOLDER / "log"
    pipe.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, _PIPE: str(pipe), _LOG: str(logs)}
    try:
        subprocess.run([control, "-d"], env=env, check=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("CUDA MPS daemon did not start (%s): packed runs are time-sliced", exc)
        yield False
        return
    saved = {key: os.environ.get(key) for key in (_PIPE, _LOG)}
    os.environ.update({_PIPE: str(pipe), _LOG: str(logs)})
    log.info("CUDA MPS daemon started for the packed runs (%s)", pipe)
    try:
        yield True
    finally:
        stop_idle_workers()  # MPS quits only once its clients (the workers) are gone
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        try:
            subprocess.run([control], input=b"quit\n", env=env, timeout=_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("CUDA MPS daemon did not quit cleanly: %s", exc)
