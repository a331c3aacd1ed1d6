"""The score summaries equal a full recomputation from the grades after every kind of write: import,
sample and grade, regrade of an ungraded item, a threshold the summaries had no slot for, a merge of
shards that replaces responses, and a test's own INSERTs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from deepdistill_tui.core.data.released import import_released
from deepdistill_tui.core.difficulty.responses import _scores_from_grades, query_scores
from deepdistill_tui.core.grading.stage import _INSERT
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store import cv_bins
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.store.shards import merge_shards, shard_path, write_shards
from tests.synthetic import write_am_files
from tests.test_select import put


def recipe(**thresholds: float) -> Recipe:
    data = load_recipe("full-32b").model_dump()
    data["grading"]["thresholds"].update(thresholds)
    data["selection"]["difficulty_teachers"] = []
    return Recipe.model_validate(data)


def assert_exact(store: Store, r: Recipe) -> None:
    teachers = [t for (t,) in store.conn.execute("SELECT DISTINCT teacher_id FROM samples")]
    assert teachers
    counted = dict(store.conn.execute("SELECT teacher_id, count(*) FROM samples GROUP BY teacher_id"))
    assert dict(store.conn.execute("SELECT teacher_id, n_samples FROM teacher_versions"
                                   " WHERE n_samples > 0")) == counted
    tokens = "SELECT query_id, teacher_id, pass_index, {} FROM {} ORDER BY 1, 2, 3"
    assert store.conn.execute(tokens.format("tokens", "sample_tokens")).fetchall() == store.conn.execute(
        tokens.format("coalesce(completion_tokens, length(response) / 4)", "samples")).fetchall()
    for tid in teachers:
        got, want = query_scores(store, r, tid), _scores_from_grades(store, r, tid)
        assert got.query_ids.tolist() == want.query_ids.tolist(), tid
        assert got.categories.tolist() == want.categories.tolist()
        np.testing.assert_array_equal(got.n, want.n)
        np.testing.assert_array_equal(got.n_pass, want.n_pass)
        np.testing.assert_allclose(got.total, want.total, atol=1e-9)
        np.testing.assert_allclose(got.total_sq, want.total_sq, atol=1e-9)
        stored = np.array(store.conn.execute(
            "SELECT n, total, total_sq, cv_bin0, cv_bin1 FROM score_summaries WHERE teacher_id = ?"
            " ORDER BY query_id", (tid,)).fetchall(), dtype=np.float64).reshape(-1, 5)
        for ddof in (0, 1):  # the generated columns follow the triggers' updates
            np.testing.assert_array_equal(cv_bins.codes(*stored[:, :3].T, ddof), stored[:, 3 + ddof])
    assert_masks_exact(store)


def assert_masks_exact(store: Store) -> None:
    """Each slot's mask holds exactly the passes (0-61) above its cut; ``wide`` counts the rest."""
    cuts = dict(store.conn.execute("SELECT slot, cut FROM summary_cuts"))
    assert cuts
    want: dict[tuple[str, str], list[int]] = {}
    for q, t, p, score in store.conn.execute("SELECT query_id, teacher_id, pass_index, verify_score"
                                             " FROM grades WHERE verify_score IS NOT NULL"):
        row = want.setdefault((t, q), [0] * (len(cuts) + 1))
        if not 0 <= p < 62:
            row[-1] += 1
            continue
        for slot, cut in cuts.items():
            if score > cut:
                row[slot] |= 1 << p
    columns = ", ".join(f"m{slot}" for slot in cuts)
    got = {(t, q): list(rest) for t, q, *rest in store.conn.execute(
        f"SELECT teacher_id, query_id, {columns}, wide FROM score_summaries")}
    assert got == want


def test_summaries_follow_every_write(tmp_path: Path) -> None:
    files = write_am_files(tmp_path / "am", 300, teachers=("r1", "7b"), passes=4)
    with Store(tmp_path / "s.db") as s:
        import_released(s, files[: len(files) // 2])
        assert_exact(s, recipe())  # built from the grades
        import_released(s, files[len(files) // 2:])  # then kept by the triggers
        assert_exact(s, recipe())
        put(s, {(f"own{i}", "gemma"): [1.0, 0.0, None, 1.0] for i in range(20)})  # plain INSERTs
        assert_exact(s, recipe())
        now = time.time()
        with s.write() as conn:  # a sandbox_error, then the next grade replaces it (the regrade path)
            for row in (("own0", "id-gemma", 2, None, 0, "sandbox_error"),
                        ("own0", "id-gemma", 2, 1.0, 1, "ok"), ("own1", "id-gemma", 2, 0.25, 0, "ok")):
                conn.execute(_INSERT, (*row, "code", "1", 0.1, "", now))
        assert s.scalar("SELECT n FROM score_summaries WHERE query_id = 'own0'") == 4
        assert_exact(s, recipe())
        with s.write() as conn:  # passes the masks cannot hold, a pass renumbered, a grade deleted
            for p in (61, 62, 70):
                conn.execute(_INSERT, ("own2", "id-gemma", p, 1.0, 1, "ok", "code", "1", 0.1, "", now))
            conn.execute("UPDATE grades SET pass_index = 9 WHERE query_id = 'own3' AND pass_index = 0")
            conn.execute("DELETE FROM grades WHERE query_id = 'own4' AND pass_index = 3")
        assert s.scalar("SELECT wide FROM score_summaries WHERE query_id = 'own2'") == 2
        assert_exact(s, recipe())
        assert_exact(s, recipe(math=0.5, other=0.3))  # new thresholds: rebuilt once, then exact
        assert s.count("summary_cuts") > 3


def test_an_import_over_stored_and_repeated_keys_keeps_every_derived_table_exact(tmp_path: Path) -> None:
    """The move suspends the row triggers of samples and grades and does their work per statement:
    keys already stored and keys staged twice in one import (the same file name in two folders)
    must leave what the triggers would, the first row of a key standing."""
    first = write_am_files(tmp_path / "a", 120, teachers=("r1", "7b"), passes=2)
    other = write_am_files(tmp_path / "b", 160, teachers=("r1",), passes=3, seed=5)  # new answers, scores
    again = write_am_files(tmp_path / "c", 160, teachers=("r1",), passes=3, seed=9)
    with Store(tmp_path / "s.db") as s:
        import_released(s, first)
        assert_exact(s, recipe())  # the summaries exist from here on, so the move must recount them
        kept = s.conn.execute("SELECT query_id, teacher_id, pass_index, response FROM samples").fetchall()
        schema = s.conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        version = s.scalar("SELECT version FROM teacher_versions WHERE teacher_id = 'am-r1'")
        report = import_released(s, [*other, *again])  # b's rows first: they stand over c's
        r1 = s.scalar("SELECT count(*) FROM samples WHERE teacher_id = 'am-r1'")
        assert r1 == 160 * 3 and report.responses == 160 * 3 - 120 * 2
        assert s.scalar("SELECT version FROM teacher_versions WHERE teacher_id = 'am-r1'") \
            == version + report.responses
        assert s.conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
        stored = set(s.conn.execute("SELECT query_id, teacher_id, pass_index, response FROM samples"))
        assert set(kept) <= stored  # a stored key keeps its response
        added = {row[3] for row in stored - set(kept)}
        assert len(added) == report.responses and added <= answers(other)  # and a new one is b's
        assert_exact(s, recipe())


def answers(files: list[Path]) -> set[str]:
    return {json.loads(line)["answer"] for f in files for line in f.read_text().splitlines()}


def test_summaries_survive_a_merge_that_replaces_responses(tmp_path: Path) -> None:
    files = write_am_files(tmp_path / "am", 120, categories=("math", "code"), teachers=("r1",), passes=4)
    with Store(tmp_path / "main.db") as main:
        import_released(main, files)
        assert_exact(main, recipe())
        write_shards(main, 2, tmp_path / "shards")
    with Store(shard_path(tmp_path / "shards", 0)) as shard:
        with shard.write() as conn:  # re-sampled passes (other responses, other grades), and regraded
            rows = conn.execute("SELECT query_id, teacher_id, pass_index FROM samples LIMIT 40").fetchall()
            for i, key in enumerate(rows):  # ones (the same response, a newer grade: INSERT OR REPLACE)
                if i < 30:
                    conn.execute("UPDATE samples SET response = 'resampled' WHERE query_id = ? AND"
                                 " teacher_id = ? AND pass_index = ?", key)
                conn.execute("UPDATE grades SET verify_score = 1 - verify_score, created_at = ? WHERE"
                             " query_id = ? AND teacher_id = ? AND pass_index = ?", (time.time(), *key))
        assert_exact(shard, recipe())
    with Store(tmp_path / "main.db") as main:
        added = merge_shards(main, [shard_path(tmp_path / "shards", i) for i in range(2)])
        assert added["replaced"] == 30
        assert_exact(main, recipe())


def test_the_released_comparison_in_sql_equals_the_one_from_per_query_rates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepdistill_tui.core.difficulty import stats, summaries

    files = write_am_files(tmp_path / "am", 400, teachers=("r1",), passes=4)
    with Store(tmp_path / "s.db") as s:
        import_released(s, files)
        with s.write() as conn:
            conn.execute("INSERT INTO released_pass_rates SELECT query_id, 'r1', 0.5 FROM queries LIMIT 100")
        r = recipe()
        fast = stats.released_comparison(s, r, {"r1": "am-r1"})
        with monkeypatch.context() as m:
            m.setattr(summaries, "released_comparison", lambda *a, **k: None)
            slow = stats.released_comparison(s, r, {"r1": "am-r1"})
    assert fast["r1"]["queries"] == slow["r1"]["queries"] == 100
    for key in ("computed_mean", "released_mean", "mean_abs_diff"):
        assert fast["r1"][key] == pytest.approx(slow["r1"][key])


def test_summaries_follow_the_real_sample_and_grade_stages(tmp_path: Path) -> None:
    """tiny's teachers answer through llama.cpp, Math-Verify and the sandbox grade: the summaries and
    the stored quality flags follow both stages' own writes."""
    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.difficulty.quality import stored_flags
    from deepdistill_tui.core.grading.stage import grade_store
    from deepdistill_tui.core.pipeline.events import noop
    from deepdistill_tui.core.teachers.sample import sample
    from tests.test_sample import tiny

    r = tiny()
    with Store(tmp_path / "s.db") as s:
        ingest(s, r.data)
        sample(s, r, limit=3, emit=noop)
        assert_exact(s, r)  # nothing graded yet: no summary rows, and none expected
        tid = s.scalar("SELECT teacher_id FROM teachers WHERE name = 'smollm2-135m'")
        before = stored_flags(s, r.selection.quality, tid)
        version = s.scalar("SELECT version FROM quality_cache WHERE teacher_id = ?", (tid,))
        grade_store(s, r, emit=noop, workers=1)
        assert s.scalar("SELECT count(*) FROM score_summaries") > 0
        assert_exact(s, r)
        sample(s, r, limit=5, emit=noop)  # new samples move the version: the flags are computed again
        assert s.scalar("SELECT version FROM teacher_versions WHERE teacher_id = ?", (tid,)) > version
        assert stored_flags(s, r.selection.quality, tid).keys() == before.keys()
        assert s.scalar("SELECT version FROM quality_cache WHERE teacher_id = ?", (tid,)) > version
        grade_store(s, r, emit=noop, workers=1)
        assert_exact(s, r)


def test_missing_passes_from_the_summaries_equal_the_count_per_query(tmp_path: Path) -> None:
    from deepdistill_tui.core.difficulty.stats import _missing_by_query, missing_counts

    files = write_am_files(tmp_path / "am", 200, teachers=("r1", "7b"), passes=4)
    with Store(tmp_path / "s.db") as s:
        half = ("_1pass.jsonl", "_2pass.jsonl")  # 7b's first two passes only
        import_released(s, [f for f in files if "_r1_" in f.name or f.name.endswith(half)])
        query_scores(s, recipe(), "am-r1")  # the summaries exist from the first read on
        put(s, {(f"extra{i}", "gemma"): [1.0] * 6 for i in range(5)})  # more passes than the recipe's
        for tid in ("am-r1", "am-7b", "id-gemma"):
            fast, slow = missing_counts(s, tid, 4), _missing_by_query(s, tid, 4)
            assert fast == slow, tid
        assert sum(v["missing_passes"] for v in missing_counts(s, "am-7b", 4).values()) == 2 * 200 + 4 * 5


def test_the_stored_cv_bins_are_their_numpy_twin(store: Store) -> None:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(3000):
        n = int(rng.integers(1, 17))
        scores = [rng.integers(0, 2, n), rng.integers(0, 5, n) / 4, rng.random(n)][i % 3].astype(float)
        rows.append((f"q{i}", n, float(scores.sum()), float((scores**2).sum())))
    rows += [("mean0", 3, 0.0, 0.0), ("same", 4, 2.0, 1.0), ("none", 0, 0.0, 0.0)]
    with store.write() as conn:
        conn.executemany("INSERT INTO score_summaries (teacher_id, query_id, n, total, total_sq)"
                         " VALUES ('t', ?, ?, ?, ?)", rows)
    got = np.array(store.conn.execute("SELECT n, total, total_sq, cv_bin0, cv_bin1 FROM score_summaries"
                                      " ORDER BY query_id").fetchall(), dtype=np.float64)
    for ddof in (0, 1):
        twin = cv_bins.codes(*got[:, :3].T, ddof)
        np.testing.assert_array_equal(twin, got[:, 3 + ddof])
        assert {-1, 0} <= set(twin.tolist()) and twin.max() == len(cv_bins.CV_EDGES)
    by_id = dict(zip(sorted(r[0] for r in rows), got[:, 3].tolist(), strict=True))
    assert by_id["mean0"] == by_id["none"] == -1 and by_id["same"] == 0  # CV 0


@pytest.mark.parametrize("from_summaries", [True, False])
def test_a_cv_on_a_bin_edge_is_counted_in_the_bin_above(
        store: Store, monkeypatch: pytest.MonkeyPatch, from_summaries: bool) -> None:
    """Four passes in five is a CV of exactly 0.5, one in five exactly 2: E[x²] - E[x]² and sqrt
    made the first 0.4999999999999999, and stats counted it in [0.3, 0.5)."""
    from deepdistill_tui.core.difficulty import stats, summaries

    put(store, {("four", "r1"): [0.0, 1.0, 1.0, 1.0, 1.0], ("one", "r1"): [1.0, 0.0, 0.0, 0.0, 0.0],
                ("quarters", "r1"): [0.0, 0.25, 0.25, 0.75, 0.75]})  # CV exactly 0.75
    if not from_summaries:  # the path a read-only store takes: from the grades
        monkeypatch.setattr(summaries, "ensure", lambda *a, **k: None)
    hist = stats.compute_stats(store, recipe())["categories"]["math"]["r1"]["cv_histogram"]
    edges = hist["edges"]
    assert hist["counts"][edges.index(0.5)] == 1 and hist["counts"][edges.index(0.75)] == 1
    assert hist["counts"][edges.index(2.0)] == 1 and sum(hist["counts"]) == 3
