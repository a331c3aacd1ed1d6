from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepdistill_tui.core.store.database import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "test.db")
    yield s
    s.close()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The recipes and demo data in a scratch folder, so tests can edit them freely."""
    dst = tmp_path / "proj"
    shutil.copytree(REPO / "recipes", dst / "recipes")
    shutil.copytree(REPO / "data" / "demo", dst / "data" / "demo")
    return dst


def data_counts(store: Store) -> dict[str, int]:
    """Row counts of the data tables (runs keep a log of failed attempts, so they are left out)."""
    return {t: store.count(t) for t in ("queries", "teachers", "samples", "grades", "selections")}
