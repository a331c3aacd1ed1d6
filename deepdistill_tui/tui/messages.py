"""Messages that carry the core's work back from worker threads to the app."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from deepdistill_tui.core.pipeline.events import Event


class ProgressEvent(Message):
    """An event of the core (sampling, grading, training, evaluation), posted from a worker."""

    def __init__(self, event: Event) -> None:
        self.event = event
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        # A flood of progress events coalesces: only the latest of a kind (and teacher) matters.
        return (self.event.high_rate and isinstance(message, ProgressEvent)
                and type(message.event) is type(self.event)
                and getattr(message.event, "teacher", None) == getattr(self.event, "teacher", None))


class StageFinished(Message):
    def __init__(self, stage: str, result: dict[str, Any]) -> None:
        self.stage = stage
        self.result = result
        super().__init__()


class StageFailed(Message):
    def __init__(self, stage: str, error: str, stopped: bool = False) -> None:
        self.stage = stage
        self.error = error
        self.stopped = stopped
        """Ended by the stop key: resumable, not broken."""
        super().__init__()
