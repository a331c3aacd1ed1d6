"""The Evaluate tab: pass@1 of the base and trained students on the held-out split, side by side."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from deepdistill_tui.core.evaluation.intervals import Interval
from deepdistill_tui.core.pipeline.events import EvalFallback, EvalProgress, Event
from deepdistill_tui.tui.plots import IntervalChart
from deepdistill_tui.tui.widgets import WorkBar


class EvalPane(Vertical):
    DEFAULT_CSS = """
    EvalPane #eval-status { padding: 1 2; height: auto; }
    EvalPane #eval-progress { margin: 0 2; }
    EvalPane #evals { height: auto; max-height: 50%; margin-top: 1; }
    EvalPane #eval-chart { height: 1fr; min-height: 8; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Press [b]e[/] to evaluate the base student and the latest trained one on the "
                     "held-out split.", id="eval-status")
        yield WorkBar(id="eval-progress", show_eta=True)
        yield DataTable(id="evals", cursor_type="row", zebra_stripes=True)
        yield IntervalChart(id="eval-chart")

    def handle(self, event: Event) -> None:
        match event:
            case EvalProgress(model=model, done=done, total=total):
                self.query_one("#eval-progress", WorkBar).update(total=total, progress=done)
                self.query_one("#eval-status", Static).update(
                    f"evaluating [b]{model}[/]: {done}/{total} problems")
            case EvalFallback(message=message):
                self.app.notify(message, severity="warning")

    def show(self, rows: list[dict[str, Any]], arms: dict[str, str] | None = None) -> None:
        """One row per evaluated model; a model that is an arm of ``ablate`` is named by its arm."""
        arms = arms or {}
        table = self.query_one("#evals", DataTable)
        cats = sorted({c for r in rows for c in r["by_category"]})
        table.clear(columns=True)
        table.add_columns("model", "k", "problems", "pass@1 [95% CI]", "0%" + " " * (BAR - 6) + "100%",
                          "vs base [95% CI]", *cats)
        for r in rows:
            d = r.get("delta_vs_base") or {}
            table.add_row(label(r["model"], arms), r["k"], r["problems"], pct(r), interval_bar(r),
                          delta_text(d) if d.get("problems") else "-",
                          *(pct(r["by_category"][c]) if c in r["by_category"] else "-" for c in cats))
        self.query_one("#eval-chart", IntervalChart).show(
            [(label(r["model"], arms), r["pass_at_1"], r["ci_low"], r["ci_high"]) for r in rows])
        if rows:
            verdicts = [f"[b]{label(r['model'], arms)}[/]: {r['delta_vs_base']['verdict']}" for r in rows
                        if (r.get("delta_vs_base") or {}).get("problems")]
            fallbacks = [f"{r['model']} answered by {r['engine']}" for r in rows
                         if not r["engine"].startswith("llama.cpp")]
            self.query_one("#eval-status", Static).update("\n".join(
                [f"{len(rows)} evaluated model(s); [b]e[/] evaluates again.", *verdicts, *fallbacks]))


BAR = 24


def label(model: str, arms: dict[str, str]) -> str:
    arm = arms.get(model)
    if arm is None or arm == "base":
        return model
    return f"{arm} ({model})"


def interval_bar(r: dict[str, Any], width: int = BAR) -> str:
    """pass@1 and its interval drawn on a 0-100% scale: ├──●──┤."""
    def at(x: float) -> int:
        return min(width - 1, max(0, round(x * (width - 1))))

    lo, mid, hi = at(r["ci_low"]), at(r["pass_at_1"]), at(r["ci_high"])
    cells = [" "] * width
    for i in range(lo, hi + 1):
        cells[i] = "─"
    cells[lo], cells[hi] = "├", "┤"
    cells[mid] = "●"
    return "".join(cells)


def pct(r: dict[str, Any]) -> str:
    return Interval.of_rate(r).rate()


def delta_text(d: dict[str, Any]) -> str:
    return Interval.of_difference(d).points()
