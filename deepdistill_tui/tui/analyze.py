"""The Analyze view: the paper's pass-rate histograms per category x teacher, and the CV histogram.

The numbers come from core.stats (computed in a worker); this widget only renders them.
"""

from __future__ import annotations

import itertools
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from deepdistill_tui.tui.plots import BarChart


def _lengths(length: dict[str, Any] | None) -> str:
    """Response length percentiles (tokens when the teacher reported them, else characters)."""
    if not length or not length.get("sampled"):
        return ""
    unit = "tokens" if "tokens" in length else "chars"
    cuts = "  ".join(f"{p} {v:,}" for p, v in length[unit].items())
    return f"response length ({unit}, {length['sampled']} sampled): {cuts}\n"


def busiest_category(stats: dict[str, Any]) -> int:
    """The index (in sorted order) of the category with the most graded responses: the view opens on
    the data (tiny's math, 199 queries), not on the first name (its code, 8 queries all wrong)."""
    cats = sorted(stats["categories"])
    graded = [sum(e["responses"] for e in stats["categories"][c].values()) for c in cats]
    return graded.index(max(graded))


class AnalyzeView(Vertical):
    """Histograms of one (category, teacher); `next_category` / `next_teacher` move through them."""

    DEFAULT_CSS = """
    AnalyzeView #analyze-head { height: auto; padding: 0 1; }
    AnalyzeView #analyze-plots { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stats: dict[str, Any] | None = None
        self.category = 0
        self.teacher = 0
        self._moved = False  # the person chose a category: keep it across refreshes

    def compose(self) -> ComposeResult:
        yield Static("No statistics yet: grade some samples, then press [b]a[/].", id="analyze-head")
        with Horizontal(id="analyze-plots"):
            yield BarChart("pass rates appear here", id="pass-chart")
            yield BarChart("the CV of the training teacher appears here", id="cv-chart")

    def text(self) -> str:
        """What the view says in words (its header): what tests and screen readers read."""
        return str(self.query_one("#analyze-head", Static).render())

    def show(self, stats: dict[str, Any]) -> None:
        self.stats = stats
        if not self._moved and stats["categories"]:
            self.category = busiest_category(stats)
        self._draw()

    def next_category(self) -> None:
        self._moved = True
        self.category += 1
        self.teacher = 0
        self._draw()

    def next_teacher(self) -> None:
        self.teacher += 1
        self._draw()

    def _draw(self) -> None:
        if not self.stats or not self.stats["categories"]:
            return
        cats = sorted(self.stats["categories"])
        cat = cats[self.category % len(cats)]
        teachers = list(self.stats["categories"][cat])
        name = teachers[self.teacher % len(teachers)]
        e = self.stats["categories"][cat][name]
        mean = e["mean_verify_score"]
        head = (f"[b]{cat}[/] · [b]{name}[/]  ({cats.index(cat) + 1}/{len(cats)} categories, "
                f"{teachers.index(name) + 1}/{len(teachers)} teachers; [b]c[/] / [b]t[/] to switch)\n"
                f"{e['queries']} queries, {e['responses']} graded responses, mean score "
                f"{'-' if mean is None else f'{mean:.3f}'}, {e['ungraded']} ungraded, "
                f"{e['missing_passes']} passes missing\n" + _lengths(e.get("length")))
        hist = e["pass_rate_histogram"]
        self.query_one("#pass-chart", BarChart).show(
            f"pass rate of {name} ({cat})", [f"{h['pass_rate']:g}" for h in hist],
            [h["queries"] for h in hist], xlabel="pass rate")
        cv_chart = self.query_one("#cv-chart", BarChart)
        if name == self.stats["training_teacher"]:
            cv = e["cv_histogram"]
            labels = [f"{lo:g}-{hi:g}" if hi is not None else f">{lo:g}"
                      for lo, hi in itertools.pairwise(cv["edges"])]
            head += f"CV of {name}'s scores: {cv['zero']} at 0, {cv['undefined']} all wrong (no CV)"
            cv_chart.show(f"CV of {name}'s scores", labels, cv["counts"], xlabel="CV")
        else:
            head += f"CV is measured on the training teacher ({self.stats['training_teacher']}): press t"
            cv_chart.show("", [], [], xlabel="CV")
        self.query_one("#analyze-head", Static).update(head.rstrip())
