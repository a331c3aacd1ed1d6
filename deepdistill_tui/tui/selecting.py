"""The Select tab: pass thresholds and CV_t per category, live counts of what the rule would keep,
saving it as a named selection, and the selections saved so far.

Responses are read from the store once (in a worker) and the rule is re-evaluated in memory on every
edit, so the counts follow the keyboard.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store


class SelectPane(Vertical):
    DEFAULT_CSS = """
    SelectPane #rule { grid-size: 3; grid-columns: 10 1fr 1fr; grid-rows: 1; height: auto;
                       padding: 0 1; grid-gutter: 0 1; }
    SelectPane #rule Input { height: 1; border: none; padding: 0 1; }
    SelectPane #rule Input.-invalid { background: $error 30%; }
    SelectPane #name-row { height: 1; padding: 0 1; }
    SelectPane #name-row Input { height: 1; border: none; width: 30; padding: 0 1; }
    SelectPane #preview { padding: 1 2; height: auto; }
    SelectPane #selections { height: 1fr; }
    """

    def __init__(self, recipe: Recipe, db_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe = recipe
        self.db_path = db_path
        self.loaded: tuple[str, Any] | None = None
        self.generation = 0
        self.read_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        with Grid(id="rule"):
            yield Label("[b]category[/]")
            yield Label("[b]pass threshold[/]")
            yield Label("[b]CV_t[/]")
            for cat in CATEGORIES:
                yield Label(cat)
                yield Input(f"{self.recipe.grading.threshold(cat):g}", id=f"thr-{cat}", type="number")
                cv = self.recipe.selection.cv_threshold.get(cat, 0.05)
                yield Input(f"{cv:g}", id=f"cv-{cat}", type="number")
        with Horizontal(id="name-row"):
            yield Label("name ")
            yield Input(self.recipe.name, id="selection-name", restrict=r"[A-Za-z0-9._-]*")
            yield Label("  [b]ctrl+s[/] saves")
        yield Static("Counts appear once the training teacher's answers are graded.", id="preview")
        yield DataTable(id="selections", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#selections", DataTable).add_columns(
            "selection", "responses", "tokens", "challenging", "easy kept", "no pass", "created")

    # ------------------------------------------------------------ the rule being edited

    def rule(self) -> Recipe:
        """The recipe with the edited values; DeepDistillError names the first bad field."""
        from deepdistill_tui.core.difficulty.selection import with_rule

        thr: dict[str, float] = {}
        cv: dict[str, float] = {}
        for cat in CATEGORIES:
            for prefix, target in (("thr", thr), ("cv", cv)):
                box = self.query_one(f"#{prefix}-{cat}", Input)
                try:
                    target[cat] = float(box.value)
                except ValueError:
                    raise DeepDistillError(f"{cat}: {box.value!r} is not a number") from None
        try:
            return with_rule(self.recipe, thr, cv)
        except Exception as exc:  # pydantic's error names the key
            raise DeepDistillError(str(exc).splitlines()[0]) from exc

    def selection_name(self) -> str:
        return self.query_one("#selection-name", Input).value.strip()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "selection-name":
            self.refresh_preview()

    def invalidate(self) -> None:
        """New grades: read the responses again on the next preview."""
        self.loaded = None

    def refresh_preview(self) -> None:
        try:
            recipe = self.rule()
        except DeepDistillError as exc:
            self.query_one("#preview", Static).update(f"[red]{exc}[/]")
            return
        self.generation += 1
        self._preview(recipe, self.generation)

    @work(thread=True, group="select-preview", exit_on_error=False)
    def _preview(self, recipe: Recipe, generation: int) -> None:
        from deepdistill_tui.core.difficulty.selection import (
            compute_selection,
            list_selections,
            training_responses,
        )

        try:
            with self.read_lock, Store(self.db_path) as store:
                if self.loaded is None:
                    self.loaded = training_responses(store, recipe)
                result = compute_selection(store, recipe, self.selection_name() or "preview", self.loaded)
                saved = list_selections(store)
        except DeepDistillError as exc:
            self.app.call_from_thread(self.query_one("#preview", Static).update, str(exc))
            return
        if generation == self.generation:  # an older edit finishing late must not overwrite a newer
            self.app.call_from_thread(self._show, result, saved)

    def _show(self, result: list[Any], saved: list[dict[str, Any]]) -> None:
        self.query_one("#preview", Static).update(render_preview(result))
        show_selections(self.query_one("#selections", DataTable), saved)


def render_preview(result: list[Any]) -> str:
    parts = []
    for sel in result:
        q = sel.counts["queries"]
        branches = " · ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.items())
        cats = " · ".join(f"{c} {n}" for c, n in sorted(sel.counts["by_category"].items())) or "none"
        parts.append(f"[b]{sel.name}[/] would keep [b]{sel.n_members}[/] responses\n"
                     f"  queries: {branches}\n  by category: {cats}")
    return "\n".join(parts)


def show_selections(table: DataTable[Any], saved: list[dict[str, Any]]) -> None:
    import time

    table.clear()
    for s in saved:
        q = s["counts"].get("queries", {})
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["created_at"]))
        table.add_row(s["name"], s["members"], s["tokens"], q.get("challenging", q.get("selected", "-")),
                      q.get("easy_kept", "-"), q.get("no_pass", "-"), when)
