"""Errors that mean "the user's input is wrong" (exit code 2), as opposed to bugs (exit code 1)."""

from __future__ import annotations


class KilnError(Exception):
    """Bad input from the user: config, data, arguments or a run directory.

    The CLI prints the message without a traceback and exits with ``exit_code``.
    """

    exit_code: int = 2


class ConfigError(KilnError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DataError(KilnError):
    """A dataset file cannot be read: names the file, the line and the problem."""


class RunDirError(KilnError):
    """A run directory is missing, incomplete or was made with a different config."""
