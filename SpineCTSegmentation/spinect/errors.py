"""Errors that reach the user: each message names the problem and what to do about it.

The CLI turns a :class:`SpinectError` into its message on stderr and ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["SpinectError", "InputError", "OutputError", "ModelError"]


class SpinectError(Exception):
    """Base class for user-facing errors (bad input, bad output path, bad model)."""

    exit_code: int = 2


class InputError(SpinectError):
    """The input image (or dataset) is missing, unreadable or not a usable 3D CT."""

    exit_code = 3


class OutputError(SpinectError):
    """The output cannot be written (missing or read-only folder, disk full, would overwrite)."""

    exit_code = 4


class ModelError(SpinectError):
    """The model file is missing, corrupt, untrained or does not match the code."""

    exit_code = 5
