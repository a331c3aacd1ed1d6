"""Export streams: each chunk's pass rates and CV are read for its own queries from the summaries, the
same values the whole per-query table gives, in memory that does not grow with the selection."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from deepdistill_tui.core.data.released import import_released
from deepdistill_tui.core.difficulty import export as export_module
from deepdistill_tui.core.difficulty.export import export
from deepdistill_tui.core.difficulty.selection import Selection, run_selection, save_selections
from deepdistill_tui.core.difficulty.stats import per_query
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from tests.synthetic import write_am_files


def recipe() -> Recipe:
    data = load_recipe("full-32b").model_dump()
    data["selection"]["difficulty_teachers"] = ["7b"]
    return Recipe.model_validate(data)


def test_exported_rates_and_cv_are_the_per_query_table_s(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "BATCH", 97)  # many chunks, none aligned with a query
    files = write_am_files(tmp_path / "am", 600, teachers=("7b", "r1"), passes=4)
    with Store(tmp_path / "s.db") as s:
        import_released(s, files)
        r = recipe()
        run_selection(s, r, "sel")
        n = export(s, r, "sel", "jsonl", tmp_path / "out.jsonl")
        table = {q["query_id"]: q for q in per_query(s, r)}
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == len(records) > 200
    for rec in records:
        q = table[rec["query_id"]]
        assert rec["cv"] == q["cv"]
        assert rec["pass_rates"] == {name: q["pass_rates"].get(name) for name in rec["pass_rates"]}


def _export_peak(store: Store, r: Recipe, keys: list[tuple[str, str, int]], out: Path) -> int:
    sel = Selection(out.stem, rule={"stage": 1}, seed=0)
    sel.members = [(q, t, p, 1) for q, t, p in keys]
    save_selections(store, [sel])
    tracemalloc.start()
    export(store, r, sel.name, "jsonl", out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_export_memory_grows_neither_with_the_selection_nor_with_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same 1,500 records from a store of 1,000 queries and from one of 12,000; then 12,000
    records: about the same memory each time (the whole per-query table was read before: it grew
    with the store)."""
    monkeypatch.setattr(export_module, "BATCH", 500)
    peaks = {}
    for n in (1000, 12000):
        files = write_am_files(tmp_path / f"am{n}", n, teachers=("r1",), passes=2, answer_chars=100)
        with Store(tmp_path / f"s{n}.db") as s:
            import_released(s, files)
            keys = s.conn.execute("SELECT query_id, teacher_id, pass_index FROM samples"
                                  " ORDER BY 1, 3").fetchall()
            peaks[n, 1500] = _export_peak(s, recipe(), keys[:1500], tmp_path / f"small{n}.jsonl")
            if n == 12000:
                peaks[n, 12000] = _export_peak(s, recipe(), keys[:12000], tmp_path / "big.jsonl")
    assert peaks[12000, 1500] < 1.5 * peaks[1000, 1500], peaks
    assert peaks[12000, 12000] < 1.5 * peaks[12000, 1500], peaks
