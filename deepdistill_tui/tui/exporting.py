"""The Export tab: a saved selection written as a dataset (jsonl, parquet or a datasets folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import Input, Label, Select, Static

from deepdistill_tui.core.difficulty.export import FORMATS

SUFFIX = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}


class ExportPane(Vertical):
    DEFAULT_CSS = """
    ExportPane #export-form { grid-size: 2; grid-columns: 12 1fr; grid-rows: 3; height: auto;
                              padding: 1 1; }
    ExportPane #export-status { padding: 1 2; height: auto; }
    """

    def __init__(self, base: Path, recipe_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.recipe_name = recipe_name

    def compose(self) -> ComposeResult:
        with Grid(id="export-form"):
            yield Label("selection")
            yield Select[str]([], id="export-selection", prompt="(save a selection first)")
            yield Label("format")
            yield Select[str]([(f, f) for f in FORMATS], id="export-format", value="jsonl",
                              allow_blank=False)
            yield Label("to")
            yield Input("", id="export-path", placeholder="output path")
            yield Label("bundle")
            yield Input(str(self.base / "bundles" / self.recipe_name), id="bundle-path",
                        placeholder="cluster bundle folder")
        yield Static("Press [b]o[/] to export the selection, [b]b[/] to write the cluster bundle (recipes "
                     "with a `cluster` section).", id="export-status")

    def set_selections(self, names: list[str]) -> None:
        box = self.query_one("#export-selection", Select)
        current = box.value
        box.set_options([(n, n) for n in names])
        if names:
            box.value = current if current in names else names[0]
        self._suggest_path()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._suggest_path()

    def _suggest_path(self) -> None:
        sel, fmt = self.choice()
        if sel:
            self.query_one("#export-path", Input).value = str(self.base / "exports" / f"{sel}{SUFFIX[fmt]}")

    def choice(self) -> tuple[str | None, str]:
        sel = self.query_one("#export-selection", Select).value
        fmt = self.query_one("#export-format", Select).value
        return (sel if isinstance(sel, str) else None), (fmt if isinstance(fmt, str) else "jsonl")

    def target(self) -> str:
        return self.query_one("#export-path", Input).value.strip()

    def bundle_target(self) -> str:
        return self.query_one("#bundle-path", Input).value.strip()

    def done(self, result: dict[str, Any]) -> None:
        if "bundle" in result:
            plan = "; ".join(f"{s['name']}: {s['steps']:,} steps" for s in result["stages"])
            text = f"wrote the bundle ({result['files']} files) to [b]{result['bundle']}[/]: {plan}"
        else:
            text = f"wrote [b]{result['records']}[/] records of {result['selection']} to {result['path']}"
        self.query_one("#export-status", Static).update(text)
