"""The Evaluate tab: pass@1 of the base and trained students on the held-out split, side by side."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, ProgressBar, Static


class EvalPane(Vertical):
    DEFAULT_CSS = """
    EvalPane #eval-status { padding: 1 2; height: auto; }
    EvalPane #eval-progress { margin: 0 2; }
    EvalPane #evals { height: 1fr; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Press [b]e[/] to evaluate the base student and the latest trained one on the "
                     "held-out split.", id="eval-status")
        yield ProgressBar(id="eval-progress", show_eta=True)
        yield DataTable(id="evals", cursor_type="row", zebra_stripes=True)

    def handle(self, event: dict[str, Any]) -> None:
        if event["event"] == "eval_progress":
            self.query_one("#eval-progress", ProgressBar).update(total=event["total"],
                                                                 progress=event["done"])
            self.query_one("#eval-status", Static).update(
                f"evaluating [b]{event['model']}[/]: {event['done']}/{event['total']} problems")

    def show(self, rows: list[dict[str, Any]]) -> None:
        table = self.query_one("#evals", DataTable)
        cats = sorted({c for r in rows for c in r["by_category"]})
        table.clear(columns=True)
        table.add_columns("model", "k", "problems", "pass@1", *cats)
        for r in rows:
            table.add_row(r["model"], r["k"], r["queries"], f"{r['pass_at_1']:.1%}",
                          *(f"{r['by_category'][c]:.1%}" if c in r["by_category"] else "-" for c in cats))
        if rows:
            self.query_one("#eval-status", Static).update(
                f"{len(rows)} evaluated model(s); [b]e[/] evaluates again.")
