"""The app's later tabs (Select, Train, Evaluate, Export), its help, palette and quit, driven with
Pilot over real store files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static

from deepdistill_tui.core.data.released import import_am
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.tui.app import ACTIONS, DeepDistillApp
from deepdistill_tui.tui.plots import LossChart
from deepdistill_tui.tui.screens import ConfirmQuit, HelpScreen
from tests.synthetic import write_am_files
from tests.test_app import ingested_app, wait_until


def am_store(tmp_path: Path, n: int = 60) -> Path:
    """AM-format data (graded as it is imported) with the full-72b recipe's teachers."""
    db = tmp_path / "am.db"
    with Store(db) as s:
        import_am(s, write_am_files(tmp_path / "am", n, categories=("math", "code")))
    return db


def kept(preview: Static) -> int:
    text = str(preview.render())
    assert "would keep" in text, text
    return int(text.split("would keep ")[1].split()[0])


async def test_select_counts_follow_the_edits_and_save_matches_them(tmp_path: Path) -> None:
    db = am_store(tmp_path)
    app = DeepDistillApp(load_recipe("full-72b"), db)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("6")
        preview = app.query_one("#preview", Static)
        await wait_until(pilot, lambda: "would keep" in str(preview.render()))
        before = kept(preview)
        assert before > 0
        app.query_one("#thr-math", Input).value = "1.5"  # no math answer scores above 1.5
        await wait_until(pilot, lambda: kept(preview) < before)
        after = kept(preview)
        app.query_one("#thr-code", Input).value = "x"
        await wait_until(pilot, lambda: "is not a number" in str(preview.render()))
        app.query_one("#thr-code", Input).value = "0.99"
        await wait_until(pilot, lambda: "would keep" in str(preview.render()))
        app.query_one("#selection-name", Input).value = "strict"
        await pilot.press("ctrl+s")
        table = app.query_one("#selections", DataTable)
        await wait_until(pilot, lambda: any(table.get_row_at(i)[0] == "strict"
                                            for i in range(table.row_count)))
    with Store(db) as s:
        assert s.scalar("SELECT n_members FROM selections WHERE name = 'strict'") == after
        rule = s.scalar("SELECT rule FROM selections WHERE name = 'strict'")
        assert '"math": 1.5' in rule


async def test_export_tab_writes_the_chosen_selection(tmp_path: Path) -> None:
    from deepdistill_tui.core.difficulty.selection import run_selection

    db = am_store(tmp_path)
    recipe = load_recipe("full-72b")
    with Store(db) as s:
        members = len(run_selection(s, recipe, "mine")[0].members)
    app = DeepDistillApp(recipe, db)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("9")
        path = app.query_one("#export-path", Input)
        await wait_until(pilot, lambda: path.value.endswith("mine.jsonl"))
        await pilot.press("o")
        await wait_until(pilot, lambda: "wrote" in str(app.query_one("#export-status", Static).render()))
    lines = Path(path.value).read_text().splitlines()
    assert len(lines) == members


async def test_export_tab_writes_the_cluster_bundle(tmp_path: Path) -> None:
    app = DeepDistillApp(load_recipe("full-32b"), tmp_path / "c.db")
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("9")
        app.query_one("#bundle-path", Input).value = str(tmp_path / "bundle")
        await pilot.press("b")
        status = app.query_one("#export-status", Static)
        await wait_until(pilot, lambda: "wrote the bundle" in str(status.render()))
        assert "stage2" in str(status.render())
    assert (tmp_path / "bundle" / "train" / "train.sbatch").is_file()


async def test_help_lists_every_key_and_the_palette_every_action(tmp_path: Path) -> None:
    app = DeepDistillApp(load_recipe("tiny"), tmp_path / "h.db")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one(Static).render())
        for _key, _action, _label, desc in ACTIONS:
            assert desc in text, desc
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for _key, action, _label, desc in ACTIONS:
            if action not in ("quit", "help"):
                assert desc.split(" (")[0] in titles
        assert "Go to Train" in titles


async def test_starting_a_stage_while_one_runs_is_refused(tmp_path: Path) -> None:
    app = DeepDistillApp(load_recipe("tiny"), tmp_path / "busy.db")
    async with app.run_test(size=(80, 24)) as pilot:
        app.running = "sample"  # as if a stage were in flight
        await pilot.press("g")
        await wait_until(pilot, lambda: any("sample is running" in n.message for n in app._notifications))
        assert app.running == "sample"


def slow_sampling_recipe() -> Recipe:
    data = load_recipe("tiny").model_dump()
    data["sampling"]["query_limit"] = 40
    data["selection"]["training_teacher"] = "smollm2-135m"
    data["selection"]["difficulty_teachers"] = []
    return Recipe.model_validate(data)


async def loop_lag(pilot: Any, seconds: float) -> float:
    """The longest the event loop was late to wake a 10 ms sleep over ``seconds``."""
    worst, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        worst = max(worst, time.perf_counter() - start - 0.01)
    return worst


async def test_keys_answer_while_sampling_and_quit_asks_then_stops_cleanly(tmp_path: Path) -> None:
    recipe = slow_sampling_recipe()
    db = tmp_path / "q.db"
    app = ingested_app(recipe, db)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("s")
        log = app.query_one("#sample-log")
        await wait_until(pilot, lambda: log.line_count > 0, 120)  # sampling is under way
        latencies = []
        for key, tab in (("1", "tab-overview"), ("3", "tab-sample"), ("5", "tab-analyze"),
                         ("3", "tab-sample")):
            # Pilot.press also waits for the whole process to go idle, which it never does while the
            # sampler works: the key goes in directly and the clock stops when the tab has changed.
            start = time.perf_counter()
            app.simulate_key(key)
            while app.query_one("TabbedContent").active != tab:  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - start)
            # At a person's pace: a key pressed the instant the last one flipped the tab waits behind
            # that tab's first paint (40 ms of layout on a quiet core, 100-180 ms beside the sampler's
            # threads on 2 cores), which measures the paint, not whether keys get through.
            await asyncio.sleep(0.25)
        assert max(latencies) < 0.1, latencies
        lag = await loop_lag(pilot, seconds=4.0)
        assert lag < 0.1, f"the event loop stalled {lag:.3f} s while sampling"
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmQuit))
        await pilot.press("n")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmQuit))
        assert app.running == "sample" and app.is_running
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmQuit))
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.is_running, 120)
    with Store(db) as s:
        per_query = s.conn.execute("SELECT count(*) FROM samples GROUP BY query_id").fetchall()
        runs = s.conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    # Stopped between queries: every sampled query has all its passes, and fewer than all were done.
    assert per_query and {n for (n,) in per_query} == {recipe.sampling.passes}
    assert len(per_query) < 40 and runs == 0


@pytest.mark.slow
async def test_train_tab_shows_the_loss_curve_and_finishes(tmp_path: Path) -> None:
    from tests.test_train import recipe as train_recipe
    from tests.test_train import training_store

    r = train_recipe(max_steps=4, save_steps=4)
    db = tmp_path / "t.db"
    training_store(db, r).close()
    app = DeepDistillApp(r, db)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("7")
        await wait_until(pilot, lambda: app.query_one("TrainPane").selection() == "s")  # type: ignore[attr-defined]
        await pilot.press("T")
        status = app.query_one("#train-status", Static)
        await wait_until(pilot, lambda: "finished" in str(status.render()) and app.running is None, 300)
        assert len(app.query_one("#loss-curve", LossChart).losses) == 4
    with Store(db) as s:
        assert s.scalar("SELECT status FROM runs WHERE command = 'train'") == "ok"


def reduced_tiny() -> Recipe:
    """The tiny recipe on a dozen training queries, a few training steps and six eval problems."""
    data = load_recipe("tiny").model_dump()
    data["sampling"]["query_limit"] = 12
    data["training"].update({"max_steps": 6, "save_steps": 6, "gguf": None})
    data["eval"].update({"limit": 6, "k": 1})
    return Recipe.model_validate(data)


@pytest.mark.slow
async def test_tiny_recipe_end_to_end_through_the_app(tmp_path: Path) -> None:
    """Ingest, sample, grade, save a selection, train and evaluate, all by keys, to the eval table."""
    app = DeepDistillApp(reduced_tiny(), tmp_path / "e2e.db")

    async def stage(key: str, name: str, timeout: float) -> None:
        before = len(app.history)
        await pilot.press(key)
        await wait_until(pilot, lambda: len(app.history) > before, timeout)
        assert app.history[-1] == (name, None), app.history[-1]

    async with app.run_test(size=(120, 40)) as pilot:
        await stage("i", "ingest", 60)
        await stage("s", "sample", 400)
        await stage("g", "grade", 300)
        await pilot.press("6")
        await wait_until(pilot, lambda: "would keep" in str(app.query_one("#preview", Static).render()), 60)
        await stage("ctrl+s", "select", 60)
        await pilot.press("7")
        await wait_until(pilot, lambda: app.query_one("TrainPane").selection() == "tiny")  # type: ignore[attr-defined]
        await stage("T", "train", 400)
        await stage("e", "eval", 400)
        table = app.query_one("#evals", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2, 30)
        models = [table.get_row_at(i)[0] for i in range(2)]
        assert models[0] == "base" and models[1].startswith("2")  # the trained run's id


async def test_evaluate_tab_names_the_ablation_arms_and_says_whether_they_beat_the_base(
        tmp_path: Path) -> None:
    from deepdistill_tui.core.evaluation.ablate import _save_arm
    from deepdistill_tui.core.evaluation.evaluate import _store_result

    r, db, run = load_recipe("tiny"), tmp_path / "e.db", "20260101-000000-abcdef"
    problems = [(f"q{i:02d}", "math") for i in range(40)]
    with Store(db) as s:
        _store_result(s, r, "base", problems, {f"q{i:02d}": 1 for i in range(8)}, {}, 1.0, "llama.cpp", "a")
        _store_result(s, r, run, problems, {f"q{i:02d}": 1 for i in range(30)}, {}, 1.0, "llama.cpp", "b")
        _save_arm(s, r, "base", None, None, "pool", {"arm": "base", "model": "base"})
        _save_arm(s, r, "cv", "tiny-ablate-cv", run, "pool", {"arm": "cv", "model": run})
    app = DeepDistillApp(r, db)
    async with app.run_test(size=(120, 32)) as pilot:
        await pilot.press("8")
        table = app.query_one("#evals", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        assert table.get_row_at(0)[0] == "base" and table.get_row_at(1)[0] == f"cv ({run})"
        assert "├" in str(table.get_row_at(1)[4])  # its interval, drawn
        status = str(app.query_one("#eval-status", Static).render())
        assert f"cv ({run}): better than the base" in status
