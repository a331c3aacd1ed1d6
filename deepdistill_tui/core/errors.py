"""The one exception type that reaches users: a one-line message naming the file, line or key."""

from __future__ import annotations


class DeepDistillError(Exception):
    """A user-facing failure. The CLI prints ``str(exc)`` on one line and exits non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class InputError(DeepDistillError):
    """Bad input data: a file, a line, a column."""


class RecipeError(DeepDistillError):
    """A recipe that does not validate."""
