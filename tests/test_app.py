"""The app driven with Textual's Pilot over a real store file."""

from __future__ import annotations

import time
from pathlib import Path

from textual.widgets import DataTable, Static

from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.tui.app import DeepDistillApp


async def wait_until(pilot, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.1)


def ingested_app(recipe, db: Path) -> DeepDistillApp:  # type: ignore[no-untyped-def]
    """The app over a store that already holds the recipe's queries."""
    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.store.database import Store

    with Store(db) as s:
        ingest(s, recipe.data)
    return DeepDistillApp(recipe, db)


async def test_overview_then_ingest_fills_the_data_tab(tmp_path: Path) -> None:
    app = DeepDistillApp(load_recipe("tiny"), tmp_path / "app.db")
    async with app.run_test(size=(100, 32)) as pilot:
        overview = app.query_one("#overview", Static)
        await wait_until(pilot, lambda: "Recipe tiny" in str(overview.render()))
        assert "Ingest the recipe's queries" in str(overview.render())
        await pilot.press("i")
        table = app.query_one("#queries", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0)
        assert table.row_count == 200  # one page of the 422 kept
        await wait_until(pilot, lambda: "queries          422" in str(overview.render()))
        report = app.query_one("#ingest-report", Static)
        text = str(report.render())
        assert "kept 422" in text and "data/demo/math.jsonl (jsonl, math)" in text


async def test_bad_store_is_a_notification_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"not a database" * 200)
    app = DeepDistillApp(load_recipe("tiny"), bad)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: bool(app._notifications))
        assert "not a usable SQLite database" in next(iter(app._notifications)).message


async def test_sample_tab_streams_progress_and_stores_passes(tmp_path: Path) -> None:
    from deepdistill_tui.core.recipe import Recipe
    from deepdistill_tui.core.store.database import Store

    data = load_recipe("tiny").model_dump()
    data["sampling"]["query_limit"] = 1
    data["selection"]["difficulty_teachers"] = ["gemma3-270m"]  # both teachers sample
    for t in data["teachers"]:
        t["sampling"]["max_tokens"] = 12
    recipe = Recipe.model_validate(data)
    db = tmp_path / "app.db"
    app = ingested_app(recipe, db)
    async with app.run_test(size=(100, 32)) as pilot:
        from deepdistill_tui.tui.widgets import WorkBar

        bars = list(app.query(WorkBar))
        await pilot.pause(1.3)  # past the bar's own one-second clock, which calls update() idle
        assert len(bars) == 4 and not any(bar.display for bar in bars)  # idle: out of sight
        await pilot.press("s")
        await wait_until(pilot, lambda: any(n.title == "Done" for n in app._notifications), 120)
        assert app.query_one("#sample-progress", WorkBar).display  # shown once its work started
        status = str(app.query_one("#sample-status", Static).render())
        assert "1/1 queries" in status
        per_teacher = str(app.query_one("#teachers", Static).render())
        assert all(f"{t.name}" in per_teacher for t in recipe.sampled_teachers()), per_teacher
    with Store(db) as s:
        assert s.count("samples") == 2 * 4


async def test_grade_then_analyze_tabs(tmp_path: Path) -> None:
    """Grade and Analyze over real AM-format data (graded at import): the histogram appears and the
    category and teacher keys move through the views."""
    from deepdistill_tui.core.data.released import import_am
    from deepdistill_tui.core.store.database import Store
    from deepdistill_tui.tui.analyze import AnalyzeView
    from deepdistill_tui.tui.plots import BarChart
    from tests.synthetic import write_am_files

    db = tmp_path / "am.db"
    with Store(db) as s:
        import_am(s, write_am_files(tmp_path / "am", 40, categories=("math", "code")))
    app = DeepDistillApp(load_recipe("full-72b"), db)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("g")
        await wait_until(pilot, lambda: any(n.title == "Done" for n in app._notifications))
        await pilot.press("a")
        view = app.query_one(AnalyzeView)
        await wait_until(pilot, lambda: view.stats is not None)
        await pilot.pause(0.2)
        first = view.text()
        assert "code" in first and "· r1" in first
        bars = app.query_one("#pass-chart", BarChart)
        assert bars.title == "pass rate of r1 (code)" and bars.labels == ["0", "0.25", "0.5", "0.75", "1"]
        assert sum(bars.counts) == int(first.split("\n")[1].split()[0])  # every query in one bin
        assert sum(app.query_one("#cv-chart", BarChart).counts) > 0
        assert "response length (" in first and "p50" in first
        assert "CV of r1's scores" in first
        await pilot.press("c")
        await pilot.pause(0.2)
        assert "math" in view.text()
        await pilot.press("t")
        await pilot.pause(0.2)
        assert "· 1.5b" in view.text() or "· 7b" in view.text()
        assert "CV is measured on the training teacher" in view.text()


async def test_grading_real_samples_from_the_app(tmp_path: Path) -> None:
    """Grading spawns worker processes while Textual captures stderr: it must work from the app."""
    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.store.database import Store

    recipe = load_recipe("tiny")
    db = tmp_path / "g.db"
    with Store(db) as s:
        ingest(s, recipe.data)
        rows = s.conn.execute("SELECT query_id, ground_truth FROM queries WHERE category = 'math'"
                              " AND split = 'train' LIMIT 3").fetchall()
        with s.write() as conn:
            conn.execute("INSERT INTO teachers (teacher_id, name, backend, model, params, created_at)"
                         " VALUES ('t', 'gemma3-270m', 'llama_cpp', 'm', '{}', 0)")
            conn.executemany(
                "INSERT INTO samples (query_id, teacher_id, pass_index, response, answer, created_at)"
                " VALUES (?, 't', 0, ?, ?, 0)",
                [(q, f"<think>sum</think> \\boxed{{{truth}}}", f"\\boxed{{{truth}}}") for q, truth in rows])
    app = DeepDistillApp(recipe, db)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("g")
        await wait_until(pilot, lambda: app.running is None and bool(app._notifications), 60)
        assert [n.title for n in app._notifications] == ["Done"], [n.message for n in app._notifications]
        await pilot.press("4")  # the inspector shows the highlighted sample in full
        table = app.query_one("#graded", DataTable)
        await wait_until(pilot, lambda: table.row_count == 3)
        table.focus()
        await pilot.press("down")
        inspector = str(app.query_one("#inspector", Static).render())
        assert "Question" in inspector and "Verdict passed" in inspector and "\\boxed" in inspector
    with Store(db) as s:
        assert s.conn.execute("SELECT count(*), sum(passed) FROM grades").fetchone() == (3, 3)


def test_analyze_opens_on_the_category_with_the_most_graded_responses() -> None:
    from deepdistill_tui.tui.analyze import busiest_category

    stats = {"categories": {"code": {"t": {"responses": 8}, "u": {"responses": 8}},
                            "math": {"t": {"responses": 199}}, "other": {"t": {"responses": 24}}}}
    assert busiest_category(stats) == 1  # math, in sorted order code, math, other


async def test_the_train_tab_shows_a_run_started_headless(tmp_path: Path) -> None:
    """A run trained through the CLI's path (the stage runner, no app) is on the Train tab when the app
    opens: its loss curve from the run's event log, its steps, its export; and the next step is not
    "Train"."""
    from textual.widgets import Log

    from deepdistill_tui.tui.plots import LossChart
    from deepdistill_tui.tui.training import TrainPane
    from tests.test_train import recipe, train, training_store

    r = recipe(max_steps=3, save_steps=3)
    db = tmp_path / "t.db"
    with training_store(db, r) as store:
        result = train(store, r, "s")
    assert (Path(result["run_dir"]) / "events.jsonl").is_file()
    app = DeepDistillApp(r, db)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(TrainPane)
        await wait_until(pilot, lambda: len(pane.losses) == 3)
        assert pane.followed == result["run_id"]
        chart = app.query_one("#loss-curve", LossChart)
        assert chart.steps == [1, 2, 3] and chart.has_data
        assert all(lr is not None for lr in chart.rates)  # the learning rate, plotted on its own axis
        status = str(app.query_one("#train-status", Static).render())
        assert "finished: 3 steps" in status, status
        log = "\n".join(str(line) for line in app.query_one("#train-log", Log).lines)
        assert result["run_id"] in log and "checkpoint at step 3" in log
        overview = str(app.query_one("#overview", Static).render())
        assert "Evaluate the trained student" in overview, overview


async def test_the_data_tab_pages_a_hundred_thousand_queries(tmp_path: Path) -> None:
    """Each page is read off an index in the Data tab's order (before schema 14, every page sorted
    every query), and paging shows the right rows."""
    from textual.widgets import DataTable

    from deepdistill_tui.core.store.database import Store

    db = tmp_path / "big.db"
    with Store(db) as s, s.write() as conn:
        conn.executemany("INSERT INTO queries (query_id, question, category, split, origin, created_at)"
                         " VALUES (?, ?, ?, 'train', 'test', 0)",
                         ((f"q{i:06d}", f"question {i}", ("math", "code")[i % 2]) for i in range(100_000)))
    with Store(db) as s:
        plan = " ".join(str(r) for r in s.conn.execute("EXPLAIN QUERY PLAN " + s.PAGE_SQL, (200, 0)))
        assert "queries_browse" in plan and "TEMP B-TREE" not in plan, plan
        started = time.perf_counter()
        s.query_page(400, 200)  # deep in the list
        assert time.perf_counter() - started < 0.5
    app = DeepDistillApp(load_recipe("tiny"), db)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("2")
        table = app.query_one("#queries", DataTable)
        await wait_until(pilot, lambda: table.row_count == 200)
        assert table.get_row_at(0)[0] == "q000001"  # code first, then math
        for _ in range(3):
            await pilot.press("n")
        await wait_until(pilot, lambda: table.get_row_at(0)[0] == f"q{2 * 600 + 1:06d}")
