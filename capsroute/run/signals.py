"""SIGTERM and SIGINT during training: noted when they arrive, acted on at a safe point.

A signal handler that raises lands wherever the interpreter happens to be: inside a checkpoint
write (leaving "interrupted after epoch 1" with no checkpoint on disk), or inside a library
call (seen once as an AttributeError from a half-built OmegaConf node instead of a clean stop).
So while a run trains, both signals only set `StopRequest.signum`; the training loop calls
`StopRequest.check()` between steps and around evaluation, never inside a write, and raises
`InterruptedRunError` there. SIGTERM is what SLURM sends before pre-emption.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from capsroute.errors import CapsrouteError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InterruptedRunError(CapsrouteError):
    """SIGINT or SIGTERM arrived; the run stopped at its last complete checkpoint."""

    code = 130


@dataclass
class StopRequest:
    """The stop signal received so far (None: keep going)."""

    signum: int | None = None

    def check(self) -> None:
        """Raise `InterruptedRunError` if a stop signal has arrived."""
        if self.signum is not None:
            raise InterruptedRunError(
                f"stopped by {signal.Signals(self.signum).name}; run the same command to resume"
            )


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Note SIGTERM/SIGINT in the yielded `StopRequest` instead of raising at once.

    Off the main thread (e.g. a launcher's worker thread) handlers cannot be set: the request
    then never fires and the signals keep their usual effect.
    """
    request = StopRequest()

    def note(signum: int, _frame: object) -> None:
        request.signum = signum

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, note)
    except ValueError:  # not the main thread
        pass
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
