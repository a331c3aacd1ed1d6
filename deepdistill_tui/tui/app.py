"""The terminal app: a face over the same core as the CLI, one tab per pipeline stage.

Long work (ingest, sampling, grading, training, evaluation, export) runs one stage at a time in a
thread worker that talks to the core; the core's progress events come back as messages, so the UI
never waits on it. Heavy libraries are imported where a stage starts, not at launch.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from deepdistill_tui.core.errors import DeepDistillError, StageStopped
from deepdistill_tui.core.pipeline.events import (
    DownloadProgress,
    Event,
)
from deepdistill_tui.core.pipeline.overview import Overview, overview
from deepdistill_tui.core.pipeline.params import (
    EvalParams,
    ExportParams,
    GradeParams,
    IngestParams,
    SampleParams,
    SelectParams,
    TrainParams,
)
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.tui.analyze import AnalyzeView
from deepdistill_tui.tui.evaluation import EvalPane
from deepdistill_tui.tui.exporting import ExportPane
from deepdistill_tui.tui.grading import GradePane
from deepdistill_tui.tui.messages import ProgressEvent, StageFailed, StageFinished
from deepdistill_tui.tui.overview import render_ingest, render_overview
from deepdistill_tui.tui.runs import RunsPane
from deepdistill_tui.tui.sampling import SamplePane
from deepdistill_tui.tui.screens import ConfirmQuit, HelpScreen, PlanScreen
from deepdistill_tui.tui.selecting import SelectPane, show_selections
from deepdistill_tui.tui.training import TrainPane

PAGE = 200
Task = Callable[[Store], dict[str, Any]]
PANES: dict[str, Any] = {"sample": SamplePane, "grade": GradePane, "train": TrainPane, "eval": EvalPane}
"""Which tab shows the events of each part of the pipeline (``Event.topic()``)."""

TABS = ("overview", "data", "sample", "grade", "analyze", "select", "train", "evaluate", "export", "runs")
"""Keys 1-9 and 0, in this order."""

# (key, action, footer label, description): the footer, the help screen and the command palette
# all read this one table.
ACTIONS: list[tuple[str, str, str, str]] = [
    ("i", "ingest", "Ingest", "Ingest the recipe's sources (dedup, decontamination)"),
    ("s", "sample", "Sample", "Sample the missing passes of every teacher"),
    ("g", "grade", "Grade", "Grade every ungraded sample"),
    ("a", "analyze", "Analyze", "Compute pass-rate and CV histograms"),
    ("ctrl+s", "save_selection", "Save sel.", "Save the Select tab's rule as a named selection"),
    ("T", "train", "Train", "Train (or resume) the student on the chosen selection"),
    ("e", "evaluate", "Eval", "Evaluate base and latest trained student (pass@1)"),
    ("o", "export", "Export", "Export the chosen selection as a dataset"),
    ("b", "cluster_export", "Bundle", "Write the cluster bundle (vLLM, Slurm, torchrun)"),
    ("R", "rehearse", "Rehearse", "Rehearse every stage capped, then plan the full run"),
    ("x", "stop", "Stop", "Stop the running stage after the item in flight"),
    ("c", "next_category", "Category", "Analyze: show the next category"),
    ("t", "next_teacher", "Teacher", "Analyze: show the next teacher"),
    ("r", "refresh", "Refresh", "Refresh every count from the store"),
    ("n", "next_page", "Next page", "Data: next page of queries"),
    ("p", "prev_page", "Prev page", "Data: previous page of queries"),
    ("question_mark", "help", "Help", "Show the keys"),
    ("q", "quit", "Quit", "Quit (asks first when work is running)"),
]
# The footer fits 80 columns; every other key is one ? away.
SHOWN = {"sample", "grade", "train", "evaluate", "stop", "help", "quit"}


def _terminal_theme() -> str:
    """A light theme on a light terminal: COLORFGBG ("fg;bg") is set by many terminals."""
    bg = os.environ.get("COLORFGBG", "").rsplit(";", 1)[-1]
    return "textual-light" if bg.isdigit() and int(bg) in (7, 15) else "textual-dark"


def _near(path: Path) -> Path:
    """A path as a person typed it: relative to the working folder when it lies under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class DeepDistillApp(App[None]):
    TITLE = "DeepDistill"
    CSS = """
    #download { dock: bottom; height: 1; padding: 0 2; background: $boost; display: none; }
    #overview, #ingest-report { padding: 1 2; }
    #ingest-report { height: auto; }
    #queries { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, action, label, show=action in SHOWN, id=action) for key, action, label, _ in ACTIONS),
        *(Binding(str((i + 1) % 10), f"tab('{tab}')", tab.title(), show=False) for i, tab in enumerate(TABS)),
    ]

    def __init__(self, recipe: Recipe, db_path: str | Path, *, hardware: str | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.db_path = Path(db_path)
        self.page = 0
        self.stop_event = threading.Event()
        self.running: str | None = None
        self.history: list[tuple[str, str | None]] = []  # (stage, error or None), oldest first
        self.quitting = False
        self.heap_settled = False  # see settle_heap
        self.hardware = hardware
        self.sub_title = f"{recipe.name} · {self.db_path}"
        self.theme = _terminal_theme()

    def compose(self) -> ComposeResult:
        base = _near(self.db_path.resolve().parent)
        yield Header()
        with TabbedContent(initial="tab-overview"):
            with TabPane("Overview", id="tab-overview"), VerticalScroll():
                yield Static("Loading…", id="overview")
            with TabPane("Data", id="tab-data"):
                yield Static("", id="ingest-report")
                yield DataTable(id="queries", zebra_stripes=True, cursor_type="row")
            with TabPane("Sample", id="tab-sample"):
                yield SamplePane()
            with TabPane("Grade", id="tab-grade"):
                yield GradePane()
            with TabPane("Analyze", id="tab-analyze"):
                yield AnalyzeView(id="analyze")
            with TabPane("Select", id="tab-select"):
                yield SelectPane(self.recipe, self.db_path)
            with TabPane("Train", id="tab-train"):
                yield TrainPane()
            with TabPane("Evaluate", id="tab-evaluate"):
                yield EvalPane()
            with TabPane("Export", id="tab-export"):
                yield ExportPane(base, self.recipe.name)
            with TabPane("Runs", id="tab-runs"):
                yield RunsPane()
        yield Static("", id="download")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queries", DataTable).add_columns("id", "split", "category", "question",
                                                          "ground truth")
        self.refresh_data()

    # ------------------------------------------------------------ reading the store

    def _store(self) -> Store:
        return Store(self.db_path)

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def refresh_data(self) -> None:
        from deepdistill_tui.core.difficulty.selection import list_selections
        from deepdistill_tui.core.evaluation.ablate import arm_models
        from deepdistill_tui.core.evaluation.evaluate import comparison
        from deepdistill_tui.core.grading.stage import recent_grades, status_counts
        from deepdistill_tui.core.pipeline.history import run_lines
        from deepdistill_tui.core.train import latest_run
        from deepdistill_tui.core.weights.files import detect_hardware

        try:
            with self._store() as store:
                snapshot = {
                    "overview": overview(store, self.recipe),
                    "queries": store.query_page(self.page, PAGE),
                    "status_counts": status_counts(store),
                    "graded": recent_grades(store),
                    "selections": list_selections(store),
                    "evals": comparison(store, self.recipe),
                    "arms": arm_models(store, self.recipe),
                    "training": latest_run(store, self.recipe),
                    "runs": run_lines(store),
                }
        except DeepDistillError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error", title="Store")
            return
        self.hardware = self.hardware or detect_hardware().describe()
        self.call_from_thread(self._show, snapshot)

    def _show(self, snap: dict[str, Any]) -> None:
        ov: Overview = snap["overview"]
        self.query_one("#overview", Static).update(render_overview(self.recipe, ov, self.hardware or ""))
        self.query_one("#ingest-report", Static).update(render_ingest(self.recipe, ov.last_ingest))
        table = self.query_one("#queries", DataTable)
        table.clear()
        for qid, split, cat, question, truth in snap["queries"]:
            table.add_row(qid[:10], split, cat, " ".join(question.split())[:70], (truth or "")[:16])
        self.query_one(GradePane).show(snap["status_counts"], snap["graded"])
        names = [s["name"] for s in snap["selections"]]
        show_selections(self.query_one("#selections", DataTable), snap["selections"])
        self.query_one(TrainPane).set_selections(names)
        self.query_one(TrainPane).follow(snap["training"])
        self.query_one(ExportPane).set_selections(names)
        self.query_one(EvalPane).show(snap["evals"], snap["arms"])
        self.query_one(RunsPane).show(snap["runs"])
        if snap["status_counts"]:
            self.query_one(SelectPane).refresh_preview()

    @work(thread=True, exclusive=True, group="run-detail", exit_on_error=False)
    def show_run(self, run_id: str) -> None:
        """The Runs tab's highlighted run: its parameters, recipe values, result and training log."""
        from deepdistill_tui.core.pipeline.history import run_detail

        try:
            with self._store() as store:
                detail = run_detail(store, run_id)
        except DeepDistillError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error", title="Store")
            return
        self.call_from_thread(self.query_one(RunsPane).detail, detail)

    # ------------------------------------------------------------ running one stage at a time

    def start_stage(self, stage: str, tab: str, params: Any, recipe: Recipe | None = None) -> None:
        """Run a stage of the core through its one front door, ``run_stage``, in a worker."""
        from deepdistill_tui.core.pipeline.context import StageContext
        from deepdistill_tui.core.pipeline.runner import run_stage

        def emit(event: Event) -> None:
            self.post_message(ProgressEvent(event))

        def work(store: Store) -> dict[str, Any]:
            ctx = StageContext(emit, self.stop_event, face="app")
            return run_stage(store, stage, recipe or self.recipe, params, ctx).summary

        self.start_task(stage, tab, work)

    def start_task(self, label: str, tab: str, fn: Task) -> None:
        if self.running:
            self.notify(f"{self.running} is running: stop it with x first", severity="warning")
            return
        self.running = label
        self.heap_settled = False
        self.stop_event.clear()
        self.query_one(TabbedContent).active = f"tab-{tab}"
        self.run_task_worker(label, fn)

    @work(thread=True, group="stage", exit_on_error=False)
    def run_task_worker(self, label: str, fn: Task) -> None:
        """One stage (or the bundle) at a time, in a thread; its end comes back as a message."""
        try:
            with self._store() as store:
                result = fn(store)
        except StageStopped as exc:
            self.post_message(StageFailed(label, str(exc), stopped=True))
            return
        except DeepDistillError as exc:
            self.post_message(StageFailed(label, str(exc)))
            return
        except Exception as exc:  # a bug must reach the user as a message, not kill the UI
            self.post_message(StageFailed(label, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(StageFinished(label, result))

    def on_progress_event(self, message: ProgressEvent) -> None:
        self.settle_heap()
        event = message.event
        if isinstance(event, DownloadProgress):
            self.show_download(event)
            return
        pane = PANES.get(event.topic())
        if pane is not None:
            self.query_one(pane).handle(event)

    def settle_heap(self) -> None:
        """Keep the collector off the objects a stage's imports left behind, once per stage.

        A stage imports llama.cpp, torch or transformers in its worker: hundreds of thousands of
        long-lived objects that every full collection then walks, holding the GIL for 0.1 s on a
        quiet machine and 0.4 s on a loaded one, and a key pressed then waits that long. By the
        first progress event the imports are done, so they move to the permanent generation.
        """
        if not self.heap_settled:
            self.heap_settled = True
            gc.freeze()

    def show_download(self, event: DownloadProgress) -> None:
        """A model download, whatever tab is open: bytes, rate and time left, gone when done."""
        line = self.query_one("#download", Static)
        line.update(f"downloading [b]{event.name}[/]: {event.text()}")
        line.display = not event.finished

    def on_stage_finished(self, message: StageFinished) -> None:
        self.running = None
        self.history.append((message.stage, None))
        if message.stage in ("export", "bundle"):
            self.query_one(ExportPane).done(message.result)
        if message.stage == "grade":
            self.query_one(SelectPane).invalidate()
        if message.stage == "rehearse":
            self.push_screen(PlanScreen(message.result["title"], message.result["plan"]))
        self.notify(f"{message.stage} finished", title="Done")
        self._after_stage()

    def on_stage_failed(self, message: StageFailed) -> None:
        self.running = None
        self.history.append((message.stage, message.error))
        if message.stopped:
            self.notify(f"{message.error}; press its key again to resume", title=f"{message.stage} stopped",
                        severity="warning")
        else:
            self.notify(message.error, title=f"{message.stage} failed", severity="error", timeout=10)
        self._after_stage()

    def _after_stage(self) -> None:
        self.query_one("#download", Static).display = False
        if self.quitting:
            self.exit()
            return
        self.refresh_data()

    # ------------------------------------------------------------ actions

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = f"tab-{tab}"
        if tab == "analyze":
            self.compute_stats()

    def action_refresh(self) -> None:
        self.refresh_data()

    def action_next_page(self) -> None:
        self.page += 1
        self.refresh_data()

    def action_prev_page(self) -> None:
        self.page = max(0, self.page - 1)
        self.refresh_data()

    def action_ingest(self) -> None:
        self.start_stage("ingest", "data", IngestParams())

    def action_sample(self) -> None:
        self.start_stage("sample", "sample", SampleParams())

    def action_grade(self) -> None:
        self.start_stage("grade", "grade", GradeParams())

    def action_save_selection(self) -> None:
        pane = self.query_one(SelectPane)
        try:
            recipe, name = pane.rule(), pane.selection_name()
        except DeepDistillError as exc:
            self.notify(str(exc), title="Select", severity="error")
            return
        if not name:
            self.notify("give the selection a name", title="Select", severity="error")
            return
        self.start_stage("select", "select", SelectParams(name), recipe)

    def action_train(self) -> None:
        selection = self.query_one(TrainPane).selection()
        if not selection:
            self.notify("no selection to train on: save one in the Select tab", severity="warning")
            self.query_one(TabbedContent).active = "tab-select"
            return
        self.start_stage("train", "train", TrainParams(selection))

    def action_evaluate(self) -> None:
        self.start_stage("eval", "evaluate", EvalParams())

    def action_export(self) -> None:
        pane = self.query_one(ExportPane)
        (selection, fmt), path = pane.choice(), pane.target()
        if not selection or not path:
            self.notify("choose a selection and an output path", title="Export", severity="warning")
            self.query_one(TabbedContent).active = "tab-export"
            return
        self.start_stage("export", "export", ExportParams(selection, fmt, path))

    def action_cluster_export(self) -> None:
        from deepdistill_tui.core.cluster.bundle import write_cluster_bundle

        out = Path(self.query_one(ExportPane).bundle_target())
        self.start_task("bundle", "export", lambda store: write_cluster_bundle(self.recipe, out, store))

    def action_rehearse(self) -> None:
        """The CLI's `run --rehearse` (with --stand-ins where the recipe needs what is not here)."""
        from deepdistill_tui.core.pipeline.context import StageContext
        from deepdistill_tui.core.pipeline.rehearsal import rehearse_beside, render
        from deepdistill_tui.core.pipeline.standins import needed

        def emit(event: Event) -> None:
            self.post_message(ProgressEvent(event))

        def work(_store: Store) -> dict[str, Any]:
            missing = needed(self.recipe)
            ctx = StageContext(emit, self.stop_event, face="app")
            where, plan = rehearse_beside(self.db_path, self.recipe, ctx, stand_ins=bool(missing))
            with_what = f" with stand-ins for {', '.join(missing)}" if missing else ""
            return {"title": f"The full run of {self.recipe.name} (rehearsed in {where}{with_what})",
                    "plan": [escape(line) for line in render(plan)]}

        self.start_task("rehearse", "overview", work)

    def action_stop(self) -> None:
        if not self.running:
            self.notify("nothing is running")
            return
        self.stop_event.set()
        self.notify(f"Stopping {self.running} after the item in flight…")

    def action_analyze(self) -> None:
        self.action_tab("analyze")

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def compute_stats(self) -> None:
        from deepdistill_tui.core.difficulty.stats import compute_stats

        try:
            with self._store() as store:
                stats = compute_stats(store, self.recipe, lengths=True)
        except DeepDistillError as exc:
            self.call_from_thread(self.notify, str(exc), severity="warning", title="Analyze")
            return
        self.call_from_thread(self.query_one(AnalyzeView).show, stats)

    def action_next_category(self) -> None:
        self.query_one(AnalyzeView).next_category()

    def action_next_teacher(self) -> None:
        self.query_one(AnalyzeView).next_teacher()

    def action_help(self) -> None:
        keys = [(key.replace("question_mark", "?"), desc) for key, _, _, desc in ACTIONS]
        keys.append(("1-9", "Tabs: " + ", ".join(TABS)))
        self.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        if not self.running:
            self.exit()
            return

        def answered(quit_: bool | None) -> None:
            if quit_:
                self.quitting = True
                self.stop_event.set()  # the stage ends at its next safe point; _after_stage exits
                self.notify(f"Stopping {self.running}, then quitting…")

        self.push_screen(ConfirmQuit(self.running), answered)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for _key, action, _label, desc in ACTIONS:
            if action not in ("quit", "help"):
                yield SystemCommand(desc.split(" (")[0], desc, getattr(self, f"action_{action}"))
        for tab in TABS:
            yield SystemCommand(f"Go to {tab.title()}", f"Show the {tab} tab",
                                lambda tab=tab: self.action_tab(tab))
