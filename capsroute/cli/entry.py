"""Running the Typer app so that every error reads the same: one line, an exit status.

`exit_on_error` turns the library's exceptions into that line (CapsrouteError: its own
status; anything else: 1).

Typer's own handling of a bad option value (`--jobs abc`) or a missing argument prints a
multi-line box; here they become `error: ...` plus where the help is, exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from capsroute.errors import CapsrouteError, one_line

try:
    from click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore


def run_app(app: Any) -> None:
    """Run `app` (a `typer.Typer`) and exit with its status, 0 included, as click's standalone
    mode does (callers and tests see one `SystemExit` whatever happened)."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `capsroute`: the help
        typer.echo(exc.ctx.get_help() if exc.ctx else "see `capsroute --help`")
        code = 2
    except ClickException as exc:  # usage errors in one line, not typer's box
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        sys.stderr.write(f"error: {exc.format_message()}{hint}\n")
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("error: interrupted\n")
        code = 130
    raise SystemExit(code if isinstance(code, int) else 0)


class exit_on_error:  # noqa: N801 (used as a context manager, reads as a statement)
    """Turn exceptions into one line on stderr and an exit status.

    CAPSROUTE_DEBUG=1 lets the exception (and its traceback) through instead.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, SystemExit | typer.Exit):
            return False
        if os.environ.get("CAPSROUTE_DEBUG"):
            return False
        if isinstance(exc, CapsrouteError):
            code, message = exc.code, str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            code, message = 130, "interrupted"
        else:
            code = 1
            message = f"{one_line(exc)} (set CAPSROUTE_DEBUG=1 for the traceback)"
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(code)
