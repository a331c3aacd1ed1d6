"""The Grade tab: progress, results by status, and an inspector of graded samples."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from deepdistill_tui.core.pipeline.events import (
    Event,
    GradeProgress,
    GradeStarted,
    PerplexityProgress,
    PerplexityStarted,
    Waiting,
)
from deepdistill_tui.tui.widgets import WorkBar


class GradePane(Vertical):
    DEFAULT_CSS = """
    GradePane #grade-status { padding: 0 2; height: auto; }
    GradePane #grade-progress { margin: 0 2; }
    GradePane Horizontal { height: 1fr; }
    GradePane #graded { width: 1fr; }
    GradePane #inspector-box { width: 1fr; border: round $primary; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Static("Press [b]g[/] to grade every ungraded sample.", id="grade-status")
        yield WorkBar(id="grade-progress", show_eta=True)
        with Horizontal():
            yield DataTable(id="graded", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="inspector-box"):
                yield Static("Select a graded sample to inspect it.", id="inspector")

    def on_mount(self) -> None:
        self.query_one("#graded", DataTable).add_columns("query", "teacher", "#", "cat", "status", "score")

    def handle(self, event: Event) -> None:
        bar = self.query_one("#grade-progress", WorkBar)
        status = self.query_one("#grade-status", Static)
        match event:
            case Waiting(message=message):
                status.update(message)
            case GradeStarted(total=total):
                bar.update(total=max(total, 1), progress=0)
                status.update(f"Grading {total} samples…")
            case GradeProgress():
                bar.update(total=max(event.total, 1), progress=event.done)
                counts = ", ".join(f"{k} {v}" for k, v in sorted(event.by_status.items()))
                status.update(f"{event.done}/{event.total} graded · {event.passed or 0} passed · {counts}")
            case PerplexityStarted(total=total, model=model):
                bar.update(total=max(total, 1), progress=0)
                status.update(f"Perplexity of {total} responses by {model}…")
            case PerplexityProgress(done=done, total=total):
                bar.update(total=max(total, 1), progress=done)
                status.update(f"perplexity: {done}/{total} responses scored")

    def show(self, counts: dict[str, int], rows: list[dict[str, Any]]) -> None:
        if counts:
            by = " · ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            self.query_one("#grade-status", Static).update(f"Graded {sum(counts.values())}: {by}")
        self.rows = rows
        table = self.query_one("#graded", DataTable)
        table.clear()
        for r in rows:
            score = "-" if r["verify_score"] is None else f"{r['verify_score']:.2f}"
            table.add_row(r["query_id"][:8], r["teacher"][:14], r["pass_index"], r["category"],
                          r["status"], score)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.rows):
            self.query_one("#inspector", Static).update(render_sample(self.rows[event.cursor_row]))


def render_sample(r: dict[str, Any]) -> str:
    from rich.markup import escape

    verdict = "[green]passed[/]" if r["passed"] else "[red]failed[/]"
    return (f"[b]Question[/] ({r['category']})\n{escape(r['question'][:1500])}\n\n"
            f"[b]Response[/] ({r['teacher']}, pass {r['pass_index']})\n{escape(r['response'][:3000])}\n\n"
            f"[b]Extracted answer[/]\n{escape(r['answer'] or '(none)')[:500]}\n\n"
            f"[b]Verdict[/] {verdict} · {r['status']} · score {r['verify_score']}\n\n"
            f"[b]Grader detail[/]\n{escape(r['detail'] or '(none)')[:3000]}")
