"""Running the Typer app so that usage errors read like every other error: one line.

Typer's own handling of a bad option value (`--jobs abc`) or a missing argument prints a
multi-line box; here they become `error: ...` plus where the help is, exit status 2.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

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
