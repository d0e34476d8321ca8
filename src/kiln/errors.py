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


def shorten(value: str, limit: int = 80) -> str:
    """``value`` quoted for a message, cut to its first ``limit`` characters with its length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def shorten_list(values: list[str], limit: int = 10) -> str:
    """``values`` as a list in a message: the first ``limit``, each shortened, then a count."""
    shown = ", ".join(shorten(v) for v in values[:limit])
    more = len(values) - limit
    return f"[{shown}, ... {more:,} more]" if more > 0 else f"[{shown}]"
