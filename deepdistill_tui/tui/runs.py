"""The Runs tab: every run in the store, from every face, and what the highlighted one was given and did."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from deepdistill_tui.core.pipeline.history import RunDetail, RunLine


class RunsPane(Vertical):
    DEFAULT_CSS = """
    RunsPane #runs { height: 1fr; }
    RunsPane #run-scroll { height: 1fr; border-top: solid $primary; }
    RunsPane #run-detail { padding: 0 1; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown: list[str] = []  # run ids in table order
        self.lines: list[RunLine] = []

    def compose(self) -> ComposeResult:
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="run-scroll"):
            yield Static("No runs yet: every stage, from this app or the command line, is listed here.",
                         id="run-detail")

    def on_mount(self) -> None:
        self.query_one("#runs", DataTable).add_columns("started", "stage", "face", "took", "status",
                                                       "summary")

    def show(self, lines: list[RunLine]) -> None:
        if lines == self.lines:
            return  # nothing changed: leave the table as the person left it
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        current = self.shown[row] if 0 <= row < len(self.shown) else None
        table.clear()
        for r in lines:
            table.add_row(_when(r.started_at), r.stage, r.face, _took(r), _status(r.status),
                          escape(r.summary), key=r.run_id)
        self.lines, self.shown = lines, [r.run_id for r in lines]
        if current in self.shown:  # a run that ended or a new one above: the cursor stays on its run
            table.move_cursor(row=self.shown.index(current))

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.row_key.value is not None:
            self.app.show_run(message.row_key.value)  # type: ignore[attr-defined]

    def detail(self, d: RunDetail | None) -> None:
        self.query_one("#run-detail", Static).update(render_detail(d) if d else "That run is gone.")


def render_detail(d: RunDetail) -> str:
    r = d.line
    head = (f"[b]{r.stage}[/] run [b]{r.run_id}[/] · {_status(r.status)} · face {r.face} · recipe {r.recipe}"
            f" · started {_when(r.started_at)} · took {_took(r)}")
    parts = [head]
    if d.error:
        parts.append(f"[red]error[/]: {d.error}")
    if d.parameters:
        parts.append("[b]parameters[/]\n" + "\n".join(f"  {k} = {_value(v)}"
                                                      for k, v in d.parameters.items()))
    if d.run_dir:
        parts.append(f"[b]run folder[/] {d.run_dir}\n" + "\n".join(f"  {line}" for line in d.events))
    if d.result is not None:
        parts.append("[b]result[/]\n  " + _value(d.result, 2000))
    if d.recipe_values:  # all of them: the detail scrolls
        parts.append("[b]recipe values[/]\n" + "\n".join(f"  {k} = {_value(v)}"
                                                        for k, v in d.recipe_values.items()))
    return "\n\n".join(parts)


def _value(v: Any, limit: int = 200) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    text = escape(text)  # a list is not a style
    return text if len(text) <= limit else text[:limit] + "…"


def _when(ts: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts))


def _took(r: RunLine) -> str:
    if r.seconds is None:
        return "running" if r.status == "running" else "-"
    s = round(r.seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _status(status: str) -> str:
    color = {"ok": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}.get(status, "white")
    return f"[{color}]{status}[/]"
