"""Plots with axes, ticks and labels (textual-plotext), fed with numbers the core has already binned.

Each plot keeps its data and draws it whenever Textual renders it, so what it shows depends only on
its data and its size; new data asks for a redraw at most ``MAX_REDRAWS_PER_S`` times a second, so a
training run that logs a step every few milliseconds costs the same as one that logs a step a minute.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from textual.app import RenderResult
from textual.timer import Timer
from textual_plotext import PlotextPlot

MAX_REDRAWS_PER_S = 4.0


class Chart(PlotextPlot):
    """A plot that redraws at a bounded rate and says what it lacks when it has nothing to show."""

    DEFAULT_CSS = """
    Chart { height: 1fr; min-height: 8; }
    """

    def __init__(self, empty: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.empty = empty
        self.has_data = False
        self._last_redraw = 0.0
        self._pending: Timer | None = None
        self.redraws = 0

    def changed(self) -> None:
        """Ask for a redraw: now, or after the rest of this period when the last one was recent."""
        if self._pending is not None:
            # One is due and will draw the latest data. Drawing now as well would be a second
            # redraw right behind it when a busy loop runs the timer late (four a second broken).
            return
        wait = self._last_redraw + 1 / MAX_REDRAWS_PER_S - time.monotonic()
        if wait <= 0:
            self._redraw()
        elif self.is_mounted:
            self._pending = self.set_timer(wait, self._redraw)

    def _redraw(self) -> None:
        self._pending = None
        self._last_redraw = time.monotonic()
        self.redraws += 1
        self.refresh()

    def render(self) -> RenderResult:
        plt = self.plt
        plt.clear_figure()
        if self.has_data:
            self.draw(plt)
        else:
            plt.title(self.empty)
        return super().render()

    def draw(self, plt: Any) -> None:
        raise NotImplementedError


class BarChart(Chart):
    """Counts per bin, the bins named on the x axis (a pass rate, a CV range)."""

    def __init__(self, empty: str, **kwargs: Any) -> None:
        super().__init__(empty, **kwargs)
        self.title, self.xlabel, self.ylabel = "", "", ""
        self.labels: list[str] = []
        self.counts: list[int] = []

    def show(self, title: str, labels: Sequence[str], counts: Sequence[int], *, xlabel: str,
             ylabel: str = "queries") -> None:
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.labels, self.counts = list(labels), [int(c) for c in counts]
        self.has_data = bool(self.labels)
        self.changed()

    def draw(self, plt: Any) -> None:
        xs = list(range(1, len(self.labels) + 1))
        plt.bar(xs, self.counts, width=0.6)
        # Every k-th bin named, k as small as lets the names fit the width: chosen here, from the
        # size, rather than by plotext.
        room = max(self.size.width - 8, 1)
        widest = max(len(label) for label in self.labels) + 1
        every = next(k for k in range(1, len(xs) + 1) if -(-len(xs) // k) * widest <= room
                     or k == len(xs))
        plt.xticks(xs[::every], self.labels[::every])
        plt.xlim(0.4, len(xs) + 0.6)
        plt.title(self.title)
        plt.xlabel(self.xlabel)
        plt.ylabel(self.ylabel)
        ticks = count_ticks(max(self.counts, default=0))
        plt.yticks(ticks)
        plt.ylim(0, ticks[-1])


def count_ticks(top: int, most: int = 5) -> list[int]:
    """Whole-number ticks from 0 past ``top`` at a step of 1, 2 or 5 times a power of ten: counts
    of queries read as counts, not as 13.2."""
    steps = (m * 10**e for e in range(20) for m in (1, 2, 5))
    step = next(s for s in steps if -(-top // s) + 1 <= most)
    last = max(step, -(-top // step) * step)
    return list(range(0, last + 1, step))


class LossChart(Chart):
    """Training loss against optimizer step, the learning rate on the right-hand axis."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("no training steps yet", **kwargs)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.rates: list[float | None] = []

    def clear(self) -> None:
        self.steps, self.losses, self.rates = [], [], []
        self.has_data = False
        self.changed()

    def add(self, step: int, loss: float, learning_rate: float | None) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.rates.append(learning_rate)
        self.has_data = True
        self.changed()

    def draw(self, plt: Any) -> None:
        plt.plot(self.steps, self.losses, label="loss", marker="braille")
        lr = [(s, r) for s, r in zip(self.steps, self.rates, strict=True) if r is not None]
        if lr:
            rates = [r for _, r in lr]
            plt.plot([s for s, _ in lr], rates, label="learning rate", yside="right", marker="braille")
            top = max(rates) or 1.0
            marks = [top * i / 4 for i in range(5)]
            plt.yticks(marks, [f"{m:.1e}" for m in marks], yside="right")
            plt.ylim(0, top, yside="right")
            plt.ylabel("lr", yside="right")
        steps = count_ticks(max(self.steps), most=6)
        plt.xticks([s for s in steps if min(self.steps) <= s <= max(self.steps)] or self.steps[:1])
        plt.xlim(min(self.steps), max(max(self.steps), min(self.steps) + 1))
        plt.xlabel("optimizer step")
        plt.ylabel("loss")


class IntervalChart(Chart):
    """pass@1 of each evaluated model with its 95% interval, the base first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("no evaluations yet: press e", **kwargs)
        self.labels: list[str] = []
        self.rates: list[float] = []
        self.lows: list[float] = []
        self.highs: list[float] = []

    def show(self, rows: Sequence[tuple[str, float, float, float]]) -> None:
        """(label, pass@1, low, high) per model, as shares of 1."""
        self.labels = [r[0] for r in rows]
        self.rates = [100 * r[1] for r in rows]
        self.lows = [100 * r[2] for r in rows]
        self.highs = [100 * r[3] for r in rows]
        self.has_data = bool(rows)
        self.changed()

    def draw(self, plt: Any) -> None:
        xs = list(range(1, len(self.labels) + 1))
        for x, lo, hi in zip(xs, self.lows, self.highs, strict=True):  # intervals are not symmetric
            plt.plot([x, x], [lo, hi], marker="│", color="blue")
        plt.scatter(xs, self.rates, marker="●", color="red")
        plt.xticks(xs, self.labels)
        plt.xlim(0.5, len(xs) + 0.5)
        plt.ylim(0, 100)
        plt.yticks([0, 25, 50, 75, 100])
        plt.ylabel("pass@1 %")
        plt.title("pass@1 with its 95% interval")
