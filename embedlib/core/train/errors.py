"""Training's two failures: it cannot start as configured, or a worker failed."""

from __future__ import annotations

__all__ = ["TrainError", "TrainFailure"]


class TrainError(ValueError):
    """Training cannot start as configured; the message says why and what to do.

    A ValueError like every other embedlib input error, so the CLI reports it as a
    message with exit code 2 rather than a stack trace."""


class TrainFailure(RuntimeError):
    """A training worker died or failed; the message names the ranks, what each
    reported, and the checkpoint a rerun resumes from. ``lost``: a worker died
    mid-run (no error of its own), which a launch again may get past."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost
