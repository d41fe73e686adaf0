"""`capsroute status`: the command-line face of `capsroute.study.status`."""

from __future__ import annotations

from typing import Annotated

import typer


def status(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the sweep ends.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 10,
) -> None:
    """Where a sweep stands: per run status, epoch k of N, accuracy, images/s, time and ETA.

    `capsroute status SWEEP_DIR`; without it, the newest sweep under <out_root>/sweeps/
    (`out_root=DIR` to look elsewhere). Reads only the sweep's run directories.
    """
    from capsroute.study.status import status_command

    status_command(ctx.args, watch, interval)
