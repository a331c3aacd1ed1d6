"""The app driven with Textual's Pilot over a real store file."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.tui.app import DeepDistillApp


async def wait_until(pilot, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not met in time"
        await pilot.pause(0.1)
        waited += 0.1


async def test_overview_then_ingest_fills_the_data_tab(tmp_path: Path) -> None:
    app = DeepDistillApp(load_recipe("tiny"), tmp_path / "app.db")
    async with app.run_test(size=(100, 32)) as pilot:
        overview = app.query_one("#overview", Static)
        await wait_until(pilot, lambda: "Recipe tiny" in str(overview.render()))
        assert "Ingest the recipe's queries" in str(overview.render())
        await pilot.press("i")
        table = app.query_one("#queries", DataTable)
        await wait_until(pilot, lambda: table.row_count > 0)
        assert table.row_count == 103
        await wait_until(pilot, lambda: "queries          103" in str(overview.render()))
        report = app.query_one("#ingest-report", Static)
        assert "kept 103" in str(report.render())


async def test_bad_store_is_a_notification_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"not a database" * 200)
    app = DeepDistillApp(load_recipe("tiny"), bad)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: bool(app._notifications))
        assert "not a usable SQLite database" in next(iter(app._notifications)).message
