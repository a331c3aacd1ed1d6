"""Snapshots (pytest-textual-snapshot) of the key screens. Update after a deliberate change with
`pytest tests/test_app_snapshots.py --snapshot-update` and look at the SVGs before committing.

Everything machine-specific is pinned: the hardware line, the store path (relative, in a scratch
folder), the theme, and the recipe (full-72b: its models are endpoints, not files that may be absent).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static

from deepdistill_tui.cli import main
from deepdistill_tui.core.evaluation.evaluate import _store_result
from deepdistill_tui.core.pipeline.events import (
    TrainCheckpoint,
    TrainExported,
    TrainFinished,
    TrainRun,
    TrainStarted,
    TrainStep,
    to_json,
)
from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.tui.analyze import AnalyzeView
from deepdistill_tui.tui.app import TABS, DeepDistillApp
from deepdistill_tui.tui.runs import RunsPane
from deepdistill_tui.tui.selecting import SelectPane
from deepdistill_tui.tui.training import TrainPane
from tests.synthetic import write_am_files
from tests.test_app import wait_until
from tests.test_app_stages import am_store

HARDWARE = "CPU: 2 cores, 24 GiB RAM; no CUDA GPU"


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLORFGBG", raising=False)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    return tmp_path


def app_for(db: str) -> DeepDistillApp:
    return DeepDistillApp(load_recipe("full-72b"), db, hardware=HARDWARE)


def test_overview_of_an_empty_store(scratch: Path, snap_compare: Any) -> None:
    app = app_for("empty.db")

    async def loaded(pilot: Any) -> None:
        await wait_until(pilot, lambda: "Recipe full-72b" in str(app.query_one("#overview", Static).render()))

    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)


def test_help_screen(scratch: Path, snap_compare: Any) -> None:
    assert snap_compare(app_for("empty.db"), press=["question_mark"], terminal_size=(80, 24))


def test_analyze_histograms(scratch: Path, snap_compare: Any) -> None:
    am_store(scratch)
    app = app_for("am.db")

    async def shown(pilot: Any) -> None:
        await pilot.press("5")
        await wait_until(pilot, lambda: app.query_one(AnalyzeView).stats is not None)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(100, 40), run_before=shown)


def test_select_with_live_counts(scratch: Path, snap_compare: Any) -> None:
    am_store(scratch)
    app = app_for("am.db")

    async def counted(pilot: Any) -> None:
        await pilot.press("6")
        await wait_until(pilot, lambda: "would keep" in str(app.query_one("#preview", Static).render()))

    assert snap_compare(app, terminal_size=(80, 24), run_before=counted)


T0 = 1_796_000_000.0  # 2026-11-30 00:53 UTC: every run's clock, pinned
RUN = "20261129-221320-aaaaaa"


@pytest.fixture(scope="module")
def whole_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store in every state the tabs show: released data imported and a selection saved by the CLI,
    a training run's folder and event log, and the base and the student evaluated. Clocks and run ids
    are pinned so that the pictures do not move."""
    folder = tmp_path_factory.mktemp("whole")
    here = Path.cwd()
    os.chdir(folder)
    try:
        write_am_files(Path("am"), 60, categories=("math", "code"))
        assert main(["import", "am", "--db", "whole.db", "--recipe", "full-72b"]) == 0
        assert main(["select", "--db", "whole.db", "--recipe", "full-72b", "--name", "snap"]) == 0
        _training_run(Path("whole.db"))
    finally:
        os.chdir(here)
    return folder


def _training_run(db: Path) -> None:
    recipe = load_recipe("full-72b")
    run_dir = Path("runs") / RUN
    run_dir.mkdir(parents=True)
    events = [TrainRun(RUN, str(run_dir)), TrainStarted("peft", 212, None, model="Qwen2.5-72B",
                                                        quantization="nf4"),
              *(TrainStep(s, 24, 2.4 / (1 + 0.15 * s), learning_rate=1e-5 * min(1.0, s / 4)) for s in
                range(1, 25)),
              TrainCheckpoint(24), TrainExported(str(run_dir / "merged"), str(run_dir / "student.gguf")),
              TrainFinished({"steps": 24, "first_loss": 2.087, "last_loss": 0.523, "output": str(run_dir)})]
    (run_dir / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in events))
    with Store(db) as s:
        held_out = [(q, c) for q, c in s.conn.execute(
            "SELECT query_id, category FROM queries ORDER BY query_id LIMIT 40")]
        k = recipe.eval.k  # passes out of k answers per problem
        _store_result(s, recipe, "base", held_out, {q: k * (i % 4 == 0) for i, (q, _) in enumerate(held_out)},
                      {}, 1.0, "llama.cpp q8_0", None)
        _store_result(s, recipe, RUN, held_out, {q: k * (i % 3 != 0) for i, (q, _) in enumerate(held_out)},
                      {}, 1.0, "llama.cpp q8_0", None)
        with s.write() as conn:
            conn.execute("INSERT INTO runs (run_id, command, recipe_name, recipe, args, status, started_at,"
                         " finished_at, face, result) VALUES (?, 'train', 'full-72b', ?, ?, 'ok', 9e9, 9e9,"
                         " 'cli', ?)", (RUN, recipe.to_json(), f'{{"selection": "snap", "run_dir": '
                                        f'"{run_dir}"}}', '{"steps": 24, "last_loss": 0.523}'))
            ids = [r for (r,) in conn.execute("SELECT run_id FROM runs ORDER BY started_at, run_id")]
            for i, run_id in enumerate(ids):  # the clocks of a night's work, a few minutes a stage
                new = RUN if run_id == RUN else f"20261129-2{i:05d}-{i:06x}"
                conn.execute("UPDATE runs SET run_id = ?, started_at = ?, finished_at = ? WHERE run_id = ?",
                             (new, T0 + 300 * i, T0 + 300 * i + 60 + 7 * i, run_id))
            conn.execute("UPDATE selections SET created_at = ?", (T0,))
            conn.execute("UPDATE evals SET created_at = ?", (T0 + 10_000,))


async def _settled(app: DeepDistillApp, pilot: Any, tab: str) -> None:
    """The tab opened and everything it reads from the store drawn (plots redraw 4 times a second)."""
    runs = app.query_one(RunsPane)
    await wait_until(pilot, lambda: bool(runs.shown))
    await pilot.press(str((TABS.index(tab) + 1) % 10))
    if tab == "analyze":
        await wait_until(pilot, lambda: app.query_one(AnalyzeView).stats is not None)
    elif tab == "select":
        await wait_until(pilot, lambda: "would keep" in str(app.query_one(SelectPane).query_one(
            "#preview", Static).render()))
    elif tab == "train":
        await wait_until(pilot, lambda: len(app.query_one(TrainPane).losses) == 24)
    elif tab == "runs":
        await wait_until(pilot, lambda: "parameters" in str(app.query_one("#run-detail", Static).render()))
    await pilot.pause(0.6)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("tab", TABS)
def test_every_tab(tab: str, size: tuple[int, int], whole_store: Path, snap_compare: Any,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(whole_store)
    monkeypatch.delenv("COLORFGBG", raising=False)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    app = app_for("whole.db")

    async def settled(pilot: Any) -> None:
        await _settled(app, pilot, tab)

    assert snap_compare(app, terminal_size=size, run_before=settled)



@pytest.mark.parametrize("tab", ["analyze", "train", "evaluate"])
def test_plots_in_the_light_theme(tab: str, whole_store: Path, snap_compare: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(whole_store)
    monkeypatch.setenv("COLORFGBG", "0;15")  # a light terminal
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    app = app_for("whole.db")
    assert app.theme == "textual-light"

    async def settled(pilot: Any) -> None:
        await _settled(app, pilot, tab)

    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)

async def test_the_runs_tab_lists_every_face_and_shows_what_a_run_was_given(
        whole_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the CLI recorded are listed beside the app's own; the highlighted one shows its
    parameters, recipe values and, for training, its folder and condensed event log."""
    folder = tmp_path / "copy"
    shutil.copytree(whole_store, folder)  # the snapshots' store stays as they expect it
    monkeypatch.chdir(folder)
    app = app_for("whole.db")
    async with app.run_test(size=(120, 40)) as pilot:
        runs = app.query_one(RunsPane)
        await wait_until(pilot, lambda: len(runs.shown) == 3)
        await pilot.press("0")
        detail = app.query_one("#run-detail", Static)
        await wait_until(pilot, lambda: RUN in str(detail.render()))
        text = str(detail.render())
        assert "face cli" in text and "selection = snap" in text
        assert "24 steps: loss 2.0870 at step 1" in text and "checkpoint at step 24" in text
        assert "sampling.passes = 4" in text  # the resolved recipe, dotted
        app.query_one("#runs", DataTable).focus()
        await pilot.press("down")  # the select run, recorded by the CLI too
        await wait_until(pilot, lambda: "select run" in str(detail.render()))
        assert "name = snap" in str(detail.render())
        await pilot.press("6")
        await wait_until(pilot, lambda: "would keep" in str(app.query_one(SelectPane).query_one(
            "#preview", Static).render()))
        app.query_one(SelectPane).query_one("#selection-name", Input).value = "from-app"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(runs.shown) == 4, 30)
        # A run whose row changes (one that was running ends) is shown as it is now, not as first read.
        with Store(folder / "whole.db") as s, s.write() as conn:
            conn.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (RUN,))
        await pilot.press("r")
        table = app.query_one("#runs", DataTable)
        await wait_until(pilot, lambda: "failed" in str(table.get_row(RUN)[4]), 30)
    with Store(folder / "whole.db") as s:
        faces = dict(s.conn.execute("SELECT command, face FROM runs WHERE run_id = ?", (runs.shown[0],)))
        assert faces == {"select": "app"}


async def test_a_plot_redraws_a_few_times_a_second_however_fast_its_data_comes() -> None:
    from textual.app import App, ComposeResult

    from deepdistill_tui.tui.plots import MAX_REDRAWS_PER_S, LossChart

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LossChart(id="chart")

    app = One()
    async with app.run_test(size=(60, 16)) as pilot:
        chart = app.query_one(LossChart)
        start, before = time.monotonic(), chart.redraws
        for step in range(1, 2001):  # a step every half millisecond, for about a second
            chart.add(step, 1 / step, 1e-4)
            if step % 20 == 0:
                await pilot.pause(0.01)
        await pilot.pause(0.5)
        seconds = time.monotonic() - start
        assert chart.steps[-1] == 2000 and chart.redraws > before  # the last data is drawn
        assert chart.redraws - before <= MAX_REDRAWS_PER_S * seconds + 2, (chart.redraws, seconds)


async def test_new_data_behind_a_late_redraw_timer_draws_once_not_twice() -> None:
    """Under load the loop runs a due redraw timer late; data that arrives in between must wait for
    it, not draw at once and then again when the timer fires (CI saw 10 redraws in 1.7 s)."""
    from textual.app import App, ComposeResult

    from deepdistill_tui.tui.plots import LossChart

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LossChart(id="chart")

    app = One()
    async with app.run_test(size=(60, 16)) as pilot:
        chart = app.query_one(LossChart)
        chart.add(1, 1.0, None)  # drawn at once
        chart.add(2, 0.5, None)  # too soon after: a timer is set
        before = chart.redraws
        time.sleep(0.4)  # the loop is busy past the timer's time, as on a loaded machine
        chart.add(3, 0.3, None)
        await pilot.pause(0.6)  # the timer, which counts from when its task starts, has fired
        assert chart.redraws - before == 1 and chart.steps[-1] == 3
