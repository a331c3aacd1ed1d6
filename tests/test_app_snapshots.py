"""Snapshots (pytest-textual-snapshot) of the key screens. Update after a deliberate change with
`pytest tests/test_app_snapshots.py --snapshot-update` and look at the SVGs before committing.

Everything machine-specific is pinned: the hardware line, the store path (relative, in a scratch
folder), the theme, and the recipe (full-72b: its models are endpoints, not files that may be absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.tui.analyze import AnalyzeView
from deepdistill_tui.tui.app import DeepDistillApp
from tests.test_app import wait_until
from tests.test_app_stages import am_store

HARDWARE = "CPU: 2 cores, 24 GiB RAM; no CUDA GPU"


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLORFGBG", raising=False)
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
