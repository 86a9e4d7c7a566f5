"""Errors every layer raises or prints: the first line of an exception, a table's error, a command's alert.

No pyspark: a failed Spark job is explained by :mod:`embedlib.spark.failures`.
"""

from __future__ import annotations

__all__ = ["CommandAlert", "TableError", "first_line"]


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its class name if it has none); for a
    Py4J error ("An error occurred while calling o42.load."), the Java exception's own message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("An error occurred while calling"):
        java = lines[1].split(": ", 1)  # "org.apache…SomeException: the message"
        return java[-1] if len(java) == 2 and "." in java[0] and " " not in java[0] else lines[1]
    return lines[0] if lines else type(exc).__name__


class TableError(ValueError):
    """A table cannot be read or written as asked; the message names it."""


class CommandAlert(RuntimeError):
    """A command that ran and found something to fail a scheduled job for (``embedlib drift``):
    its report's ``lines`` are printed, the message logged, and the process exits ``exit_code``."""

    def __init__(self, message: str, lines: list[str], exit_code: int) -> None:
        super().__init__(message)
        self.lines = lines
        self.exit_code = exit_code
