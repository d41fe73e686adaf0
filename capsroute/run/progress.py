"""How a training epoch shows its progress: a rich bar on a terminal, plain log lines at every
10% elsewhere (log files, SLURM), and the one-line epoch summary."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("capsroute")


@contextmanager
def epoch_progress(
    console: Console, epoch: int, epochs: int, batches: int, enabled: bool
) -> Iterator[Any]:
    """A rich progress bar on a terminal; plain log lines at every 10% elsewhere.

    Yields `advance(running_loss_tensor, step)`. The loss is read from the device only every
    `_LOSS_EVERY` steps, so the training step never waits on the host.
    """
    label = f"epoch {epoch}/{epochs}"
    done = 0
    if enabled and console.is_terminal:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(label, total=batches, loss="-")

            def advance(loss: torch.Tensor, step: int) -> None:
                fields = {"loss": f"{loss.item():.4f}"} if step % _LOSS_EVERY == 0 else {}
                progress.update(task, advance=1, **fields)

            yield advance
        return
    marks = {max(1, round(batches * k / 10)) for k in range(1, 10)} if enabled else set()

    def advance(loss: torch.Tensor, step: int) -> None:
        nonlocal done
        done += 1
        if done in marks:
            log.info("%s: %d/%d batches, mean loss %.4f", label, done, batches, loss.item())

    yield advance


_LOSS_EVERY = 20


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The one-line epoch summary."""
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"train {100 * row['train_acc']:.2f}%  train-eval {100 * row['train_eval_acc']:.2f}%  "
        f"test {100 * row['test_acc']:.2f}% (loss {row['test_loss']:.4f})  "
        f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
    )
