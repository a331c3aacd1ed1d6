"""The Sample tab: live progress per teacher and the latest responses as they arrive."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from deepdistill_tui.core.pipeline.events import Event, SampleFailed, SampleProgress, SampleStarted, Waiting
from deepdistill_tui.tui.widgets import WorkBar


class SamplePane(Vertical):
    DEFAULT_CSS = """
    SamplePane #sample-status { padding: 1 2 0 2; height: auto; }
    SamplePane #teachers { padding: 0 2 1 2; height: auto; }
    SamplePane #sample-progress { margin: 0 2; }
    SamplePane #sample-log { height: 1fr; border: round $primary; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.teachers: dict[str, str] = {}  # teacher -> its progress line, in the order they ran

    def compose(self) -> ComposeResult:
        yield Static("Press [b]s[/] to sample the teachers, [b]x[/] to stop.", id="sample-status")
        yield Static("", id="teachers")
        yield WorkBar(id="sample-progress", show_eta=True)
        yield Log(id="sample-log", max_lines=500)

    def handle(self, event: Event) -> None:
        status = self.query_one("#sample-status", Static)
        bar = self.query_one("#sample-progress", WorkBar)
        match event:
            case SampleStarted(teacher=teacher, queries_total=total, passes_total=passes):
                bar.update(total=max(total, 1), progress=0)
                line = f"0/{total} queries, {passes} passes to generate"
                status.update(f"[b]{teacher}[/]: {line}")
                self._teacher(teacher, line)
            case SampleProgress():
                bar.update(progress=event.queries_done)
                line = (f"{event.queries_done}/{event.queries_total} queries · "
                        f"{event.tokens_per_s:.0f} tok/s{event.engine_text()}")
                status.update(f"[b]{event.teacher}[/]: {line}")
                self._teacher(event.teacher, line)
                text = " ".join(event.last_response.split())[:200]
                self.query_one("#sample-log", Log).write_line(f"{event.teacher}: {text}")
            case SampleFailed(teacher=teacher, error=error):
                self._teacher(teacher, f"[red]failed[/]: {error[:120]}")
                self.app.notify(error, severity="warning")
            case Waiting(message=message):
                self.app.notify(message, severity="warning")

    def _teacher(self, name: str, line: str) -> None:
        """One line per teacher, so earlier teachers' totals stay in view while the next one runs."""
        self.teachers[name] = line
        self.query_one("#teachers", Static).update(
            "\n".join(f"[b]{t:<16}[/] {text}" for t, text in self.teachers.items()))
