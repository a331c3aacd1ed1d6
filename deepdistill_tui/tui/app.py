"""The terminal app: a face over the same core as the CLI. Long work runs in thread workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Log,
    ProgressBar,
    Static,
    TabbedContent,
    TabPane,
)

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.models import detect_hardware
from deepdistill_tui.core.overview import Overview, overview
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store import Store
from deepdistill_tui.tui.analyze import AnalyzeView

PAGE = 200


class ProgressEvent(Message):
    """A progress event of the core (sampling, grading), posted from a worker thread."""

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


def render_overview(recipe: Recipe, ov: Overview, hardware: str) -> str:
    c = ov.counts
    models = "\n".join(
        f"  {'[green]✔[/]' if m.present else '[red]✘[/]'} {m.role:<8} {m.name:<18} {m.origin}"
        for m in ov.models
    )
    splits = ", ".join(f"{k} {v}" for k, v in sorted(ov.queries_by_split.items())) or "none"
    cats = ", ".join(f"{k} {v}" for k, v in sorted(ov.queries_by_category.items())) or "none"
    return (
        f"[b]Recipe {recipe.name}[/]\n{' '.join(recipe.description.split())}\n\n"
        f"[b]Machine[/]  {hardware}\n\n"
        f"[b]Progress[/]\n"
        f"  queries     {c['queries']:>8}   ({splits}; {cats})\n"
        f"  samples     {c['samples']:>8}   of {recipe.sampling.passes} passes x "
        f"{len(recipe.teachers)} teachers per training query\n"
        f"  grades      {c['grades']:>8}\n"
        f"  selections  {c['selections']:>8}\n"
        f"  runs        {c['runs']:>8}\n\n"
        f"[b]Models[/]\n{models}\n\n"
        f"[b]Next[/]  {ov.next_step}"
    )


def render_ingest(last: dict[str, Any] | None) -> str:
    if not last or not last.get("result"):
        return "No ingest yet. Press [b]i[/] to read the recipe's sources."
    rep = last["result"].get("ingest")
    if not rep:
        return f"Last ingest: {last['status']}"
    removed = "  ".join(f"{k} {v}" for k, v in rep["removed"].items())
    return (f"Last ingest ({last['status']}): read {rep['read']}, kept {rep['kept']}, "
            f"new {rep['inserted']}\nremoved: {removed}")


class DeepDistillApp(App[None]):
    TITLE = "DeepDistill"
    CSS = """
    #overview, #ingest-report { padding: 1 2; }
    #queries { height: 1fr; }
    #sample-status { padding: 1 2; height: auto; }
    #sample-progress { margin: 0 2; }
    #sample-log { height: 1fr; border: round $primary; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "ingest", "Ingest", id="ingest"),
        Binding("s", "sample", "Sample", id="sample"),
        Binding("x", "stop", "Stop", id="stop"),
        Binding("g", "grade", "Grade", id="grade"),
        Binding("a", "analyze", "Analyze", id="analyze"),
        Binding("c", "next_category", "Category", id="next_category", show=False),
        Binding("t", "next_teacher", "Teacher", id="next_teacher", show=False),
        Binding("r", "refresh", "Refresh", id="refresh"),
        Binding("n", "next_page", "Next page", id="next_page"),
        Binding("p", "prev_page", "Prev page", id="prev_page"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, recipe: Recipe, db_path: str | Path) -> None:
        super().__init__()
        self.recipe = recipe
        self.db_path = Path(db_path)
        self.page = 0
        self.stop_event = threading.Event()
        self.sub_title = f"{recipe.name} · {self.db_path}"

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="tab-overview"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll():
                yield Static("Loading…", id="overview")
            with TabPane("Data", id="tab-data"):
                yield Static("", id="ingest-report")
                yield DataTable(id="queries", zebra_stripes=True, cursor_type="row")
            with TabPane("Sample", id="tab-sample"):
                yield Static("Press [b]s[/] to sample the teachers, [b]x[/] to stop.", id="sample-status")
                yield ProgressBar(id="sample-progress", show_eta=True)
                yield Log(id="sample-log", max_lines=500)
            with TabPane("Grade", id="tab-grade"):
                yield Static("Press [b]g[/] to grade every ungraded sample.", id="grade-status")
                yield ProgressBar(id="grade-progress", show_eta=True)
            with TabPane("Analyze", id="tab-analyze"), VerticalScroll():
                yield AnalyzeView(id="analyze")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#queries", DataTable)
        table.add_columns("id", "split", "category", "question", "ground truth")
        self.refresh_data()

    def _store(self) -> Store:
        return Store(self.db_path)

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def refresh_data(self) -> None:
        try:
            with self._store() as store:
                ov = overview(store, self.recipe)
                rows = store.conn.execute(
                    "SELECT query_id, split, category, question, ground_truth FROM queries"
                    " ORDER BY split, category, query_id LIMIT ? OFFSET ?",
                    (PAGE, self.page * PAGE),
                ).fetchall()
        except DeepDistillError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error", title="Store")
            return
        hardware = detect_hardware().describe()
        self.call_from_thread(self._show, ov, rows, hardware)

    def _show(self, ov: Overview, rows: list[tuple[Any, ...]], hardware: str) -> None:
        self.query_one("#overview", Static).update(render_overview(self.recipe, ov, hardware))
        self.query_one("#ingest-report", Static).update(render_ingest(ov.last_ingest))
        table = self.query_one("#queries", DataTable)
        table.clear()
        for qid, split, cat, question, truth in rows:
            short = " ".join(question.split())
            table.add_row(qid[:10], split, cat, short[:70], (truth or "")[:16])

    def action_refresh(self) -> None:
        self.refresh_data()

    def action_next_page(self) -> None:
        self.page += 1
        self.refresh_data()

    def action_prev_page(self) -> None:
        self.page = max(0, self.page - 1)
        self.refresh_data()

    def action_ingest(self) -> None:
        self.notify("Ingesting the recipe's sources…")
        self.run_ingest()

    def run_ingest(self) -> None:
        from deepdistill_tui.core.pipeline import parse_stages, run_stage

        self.run_stage_worker("ingest", lambda store, emit: run_stage(
            store, parse_stages("ingest")[0], self.recipe, emit))

    def action_sample(self) -> None:
        from deepdistill_tui.core.sample import sample

        self.stop_event.clear()
        self.query_one(TabbedContent).active = "tab-sample"
        self.run_stage_worker("sample", lambda store, emit: {"teachers": [
            r.as_dict() for r in sample(store, self.recipe, emit=emit, stop=self.stop_event)]})

    def action_stop(self) -> None:
        self.stop_event.set()
        self.notify("Stopping after the item in flight…")

    def action_grade(self) -> None:
        from deepdistill_tui.core.grade import grade_store

        self.stop_event.clear()
        self.query_one(TabbedContent).active = "tab-grade"
        self.run_stage_worker("grade", lambda store, emit: grade_store(
            store, self.recipe, emit=emit, stop=self.stop_event))

    @work(thread=True, exclusive=True, group="stage", exit_on_error=False)
    def run_stage_worker(self, stage: str,
                         fn: Callable[[Store, Callable[[dict[str, Any]], None]], dict[str, Any]]) -> None:
        """Run one stage of the core in a thread: its events and its end come back as messages."""

        def emit(event: dict[str, Any]) -> None:
            self.post_message(ProgressEvent(event))

        try:
            with self._store() as store:
                result = fn(store, emit)
        except DeepDistillError as exc:
            self.post_message(StageFailed(stage, str(exc)))
            return
        self.post_message(StageFinished(stage, result))

    def action_analyze(self) -> None:
        self.query_one(TabbedContent).active = "tab-analyze"
        self.compute_stats()

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def compute_stats(self) -> None:
        from deepdistill_tui.core.stats import compute_stats

        try:
            with self._store() as store:
                stats = compute_stats(store, self.recipe, lengths=False)
        except DeepDistillError as exc:
            self.call_from_thread(self.notify, str(exc), severity="warning", title="Analyze")
            return
        self.call_from_thread(self.query_one(AnalyzeView).show, stats)

    def action_next_category(self) -> None:
        self.query_one(AnalyzeView).next_category()

    def action_next_teacher(self) -> None:
        self.query_one(AnalyzeView).next_teacher()

    def on_progress_event(self, message: ProgressEvent) -> None:
        event = message.event
        if event["event"].startswith("grade_"):
            self._show_grade_event(event)
            return
        status = self.query_one("#sample-status", Static)
        bar = self.query_one("#sample-progress", ProgressBar)
        log = self.query_one("#sample-log", Log)
        kind = event["event"]
        if kind == "sample_started":
            bar.update(total=max(event["queries_total"], 1), progress=0)
            status.update(f"[b]{event['teacher']}[/]: {event['queries_total']} queries, "
                          f"{event['passes_total']} passes to generate")
        elif kind == "sample_progress":
            bar.update(progress=event["queries_done"])
            status.update(f"[b]{event['teacher']}[/]: {event['queries_done']}/{event['queries_total']}"
                          f" queries · {event['tokens_per_s']:.0f} tok/s")
            log.write_line(" ".join(event["last_response"].split())[:200])
        elif kind in ("sample_failed", "sample_waiting"):
            self.notify(event.get("error") or event.get("message", ""), severity="warning")

    def _show_grade_event(self, event: dict[str, Any]) -> None:
        bar = self.query_one("#grade-progress", ProgressBar)
        status = self.query_one("#grade-status", Static)
        if event["event"] == "grade_started":
            bar.update(total=max(event["total"], 1), progress=0)
            status.update(f"Grading {event['total']} samples…")
        elif event["event"] == "grade_progress":
            bar.update(total=max(event["total"], 1), progress=event["done"])
            counts = ", ".join(f"{k} {v}" for k, v in sorted(event.get("by_status", {}).items()))
            status.update(f"{event['done']}/{event['total']} graded · {event.get('passed', 0)} passed"
                          f" · {counts}")

    def on_stage_finished(self, message: StageFinished) -> None:
        self.notify(f"{message.stage} finished", title="Done")
        self.refresh_data()

    def on_stage_failed(self, message: StageFailed) -> None:
        self.notify(message.error, title=f"{message.stage} failed", severity="error", timeout=10)
        self.refresh_data()
