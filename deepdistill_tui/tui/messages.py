"""Messages that carry the core's work back from worker threads to the app."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ProgressEvent(Message):
    """A progress event of the core (sampling, grading, training, evaluation), posted from a worker."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        # A flood of progress events coalesces: only the latest of a kind (and teacher) matters.
        kind = self.event["event"]
        return (isinstance(message, ProgressEvent) and kind.endswith("_progress")
                and message.event["event"] == kind
                and message.event.get("teacher") == self.event.get("teacher"))


class StageFinished(Message):
    def __init__(self, stage: str, result: dict[str, Any]) -> None:
        self.stage = stage
        self.result = result
        super().__init__()


class StageFailed(Message):
    def __init__(self, stage: str, error: str) -> None:
        self.stage = stage
        self.error = error
        super().__init__()
