"""The Sample tab: live progress per teacher and the latest responses as they arrive."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, ProgressBar, Static

from deepdistill_tui.core.sample import in_flight_text


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
        yield ProgressBar(id="sample-progress", show_eta=True)
        yield Log(id="sample-log", max_lines=500)

    def handle(self, event: dict[str, Any]) -> None:
        status = self.query_one("#sample-status", Static)
        bar = self.query_one("#sample-progress", ProgressBar)
        kind = event["event"]
        if kind == "sample_started":
            bar.update(total=max(event["queries_total"], 1), progress=0)
            status.update(f"[b]{event['teacher']}[/]: {event['queries_total']} queries, "
                          f"{event['passes_total']} passes to generate")
            self._teacher(event["teacher"], f"0/{event['queries_total']} queries, "
                                            f"{event['passes_total']} passes to generate")
        elif kind == "sample_progress":
            bar.update(progress=event["queries_done"])
            line = (f"{event['queries_done']}/{event['queries_total']} queries · "
                    f"{event['tokens_per_s']:.0f} tok/s{in_flight_text(event)}")
            status.update(f"[b]{event['teacher']}[/]: {line}")
            self._teacher(event["teacher"], line)
            text = " ".join(event["last_response"].split())[:200]
            self.query_one("#sample-log", Log).write_line(f"{event['teacher']}: {text}")
        elif kind == "sample_failed":
            self._teacher(event["teacher"], f"[red]failed[/]: {event['error'][:120]}")
            self.app.notify(event["error"], severity="warning")
        elif kind == "sample_waiting":
            self.app.notify(event.get("message", ""), severity="warning")

    def _teacher(self, name: str, line: str) -> None:
        """One line per teacher, so earlier teachers' totals stay in view while the next one runs."""
        self.teachers[name] = line
        self.query_one("#teachers", Static).update(
            "\n".join(f"[b]{t:<16}[/] {text}" for t, text in self.teachers.items()))
