"""The terminal app: a face over the same core as the CLI. Long work runs in thread workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.models import detect_hardware
from deepdistill_tui.core.overview import Overview, overview
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store import Store

PAGE = 200


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
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("i", "ingest", "Ingest", id="ingest"),
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
        self.sub_title = f"{recipe.name} · {self.db_path}"

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="tab-overview"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll():
                yield Static("Loading…", id="overview")
            with TabPane("Data", id="tab-data"):
                yield Static("", id="ingest-report")
                yield DataTable(id="queries", zebra_stripes=True, cursor_type="row")
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

    @work(thread=True, exclusive=True, group="stage", exit_on_error=False)
    def run_ingest(self) -> None:
        from deepdistill_tui.core.pipeline import parse_stages, run_stage

        try:
            with self._store() as store:
                result = run_stage(store, parse_stages("ingest")[0], self.recipe)
        except DeepDistillError as exc:
            self.post_message(StageFailed("ingest", str(exc)))
            return
        self.post_message(StageFinished("ingest", result))

    def on_stage_finished(self, message: StageFinished) -> None:
        self.notify(f"{message.stage} finished", title="Done")
        self.refresh_data()

    def on_stage_failed(self, message: StageFailed) -> None:
        self.notify(message.error, title=f"{message.stage} failed", severity="error", timeout=10)
        self.refresh_data()
