"""The one exception type that reaches users: a one-line message naming the file, line or key."""

from __future__ import annotations

from typing import Any


class DeepDistillError(Exception):
    """A user-facing failure. The CLI prints ``str(exc)`` on one line and exits non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class InputError(DeepDistillError):
    """Bad input data: a file, a line, a column."""


class RecipeError(DeepDistillError):
    """A recipe that does not validate."""


class StageStopped(DeepDistillError):
    """The stop signal ended a stage early; what it finished is stored, and a rerun picks up there."""


class StageError(DeepDistillError):
    """A stage that failed with a partial report worth keeping in its ``runs`` row."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary
