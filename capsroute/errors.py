"""Errors a user can act on. The CLI prints their message as one line and exits with `code`."""

from __future__ import annotations


class CapsrouteError(Exception):
    """A failure with a one-line, actionable message; `code` is the process exit status."""

    code = 1


class ConfigError(CapsrouteError):
    """Bad user input (config values, overrides, command options): exit status 2."""

    code = 2


class DataError(CapsrouteError):
    """Dataset files missing, unreadable or corrupt, or a download that failed."""

    code = 2


class RunDirError(CapsrouteError):
    """A run directory that cannot be used: unwritable, locked, or holding another config's run."""

    code = 2


class OutputWriteError(CapsrouteError):
    """A result file could not be written (disk full, permissions); the old version is intact."""


class CheckpointError(CapsrouteError):
    """A checkpoint that cannot be loaded (damaged, or from an incompatible config)."""

    code = 2


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for logs, summaries and unexpected errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
