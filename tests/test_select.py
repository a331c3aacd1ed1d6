"""Statistics and selection on hand-made fixtures whose answers were worked out by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepdistill_tui.core.difficulty.export import export
from deepdistill_tui.core.difficulty.responses import QueryScores
from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.difficulty.stats import compute_stats, per_query
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store


def recipe(**selection: Any) -> Recipe:
    data = load_recipe("full-72b").model_dump()  # the paper's values, Stage II off
    data["selection"].update(selection)
    return Recipe.model_validate(data)


def put(store: Store, scores: dict[tuple[str, str], list[float | None]],
        categories: dict[str, str] | None = None) -> None:
    """scores[(query, teacher)] = verify scores per pass; None = sampled but not graded."""
    now = time.time()
    with store.write() as conn:
        for (q, t), passes in scores.items():
            cat = (categories or {}).get(q, "math")
            conn.execute("INSERT INTO queries VALUES (?, ?, ?, 'train', NULL, NULL, NULL, NULL, 'test', ?)"
                         " ON CONFLICT DO NOTHING", (q, f"question {q}", cat, now))
            conn.execute("INSERT INTO teachers VALUES (?, ?, 'am_import', 'm', NULL, '{}', ?)"
                         " ON CONFLICT DO NOTHING", (f"id-{t}", t, now))
            for p, score in enumerate(passes):
                conn.execute("INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning,"
                             " answer, completion_tokens, created_at) VALUES (?, ?, ?, ?, 'r', 'a', 10, ?)",
                             (q, f"id-{t}", p, f"<think>r</think>a {q}{p}", now))
                if score is not None:
                    conn.execute("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed,"
                                 " status, grader, grader_version, created_at)"
                                 " VALUES (?, ?, ?, ?, 0, 'ok', 't', '1', ?)",
                                 (q, f"id-{t}", p, score, now))


def cv_of(xs: list[float], ddof: int = 0) -> float:
    a = np.array(xs)
    qs = QueryScores(np.array(["q"], dtype=object), np.array(["math"], dtype=object),
                     np.array([len(a)], float), np.array([0.0]), np.array([a.sum()]),
                     np.array([(a * a).sum()]))
    return float(qs.cv_with(ddof)[0])


def test_paper_cv_examples() -> None:
    # docs/PAPER.md section 4. The worked examples use the sample std; the binary table the population one.
    assert cv_of([0.5] * 5) == 0
    assert cv_of([0.9, 0.1, 0.7, 0.3, 0.5], ddof=1) == pytest.approx(0.63, abs=0.005)
    assert cv_of([0.6, 0.8, 0.7, 0.7, 0.7], ddof=1) == pytest.approx(0.10, abs=0.005)
    assert cv_of([0.3, 0.5, 0.4, 0.4, 0.4], ddof=1) == pytest.approx(0.18, abs=0.005)
    assert cv_of([1, 1, 1, 1]) == 0
    assert cv_of([1, 1, 1, 0]) == pytest.approx(0.577, abs=0.001)
    assert cv_of([1, 1, 0, 0]) == pytest.approx(1.0)
    assert cv_of([1, 0, 0, 0]) == pytest.approx(1.732, abs=0.001)
    assert np.isnan(cv_of([0, 0, 0, 0]))  # a mean of 0 has no CV


FIXTURE = {
    ("easy", "r1"): [1, 1, 1, 1],          # CV 0: easy, math -> dropped
    ("hard", "r1"): [1, 0, 0, 0],          # CV 1.73: challenging, keep pass 0
    ("tie", "r1"): [1, 1, 0, 0],           # CV 1: challenging, keep passes 0 and 1
    ("zero", "r1"): [0, 0, 0, 0],          # no pass (mean 0, no CV)
    ("missing", "r1"): [1, 0],             # two passes only: CV over what exists (1.0)
    ("ungraded", "r1"): [1, None, 0, None],  # graded ones only: [1, 0]
    ("chat", "r1"): [0.9, 0.9, 0.9, 0.9],  # other, easy: kept with probability 0.5
    ("hard", "1.5b"): [0, 0, 0, 0],
    ("tie", "1.5b"): [1, 1, 1, 0],
    ("easy", "7b"): [1, 1, 0, 1],
}
CATS = {"chat": "other"}


def members(store: Store, name: str) -> set[tuple[str, int]]:
    return {(q, p) for q, p in store.conn.execute(
        "SELECT query_id, pass_index FROM selection_members WHERE selection = ?", (name,))}


def test_algorithm_one_by_hand(store: Store) -> None:
    put(store, FIXTURE, CATS)
    [sel] = run_selection(store, recipe(), "s")
    got = members(store, "s")
    expected = {("hard", 0), ("tie", 0), ("tie", 1), ("missing", 0), ("ungraded", 0)}
    chat = {("chat", p) for p in range(4)}
    assert got in (expected, expected | chat)
    q = sel.counts["queries"]
    assert q["no_pass"] == 1 and q["challenging"] == 4
    assert q["easy_kept"] + q["easy_dropped"] == 2
    assert q["easy_kept"] == (1 if ("chat", 0) in got else 0)


def test_same_rule_and_seed_same_set_and_seeds_differ(store: Store) -> None:
    chats = {(f"c{i}", "r1"): [0.9] * 4 for i in range(40)}
    put(store, chats, {f"c{i}": "other" for i in range(40)})
    run_selection(store, recipe(seed=1), "a")
    run_selection(store, recipe(seed=1), "b")
    run_selection(store, recipe(seed=2), "c")
    a, b, c = members(store, "a"), members(store, "b"), members(store, "c")
    assert a == b and a != c
    assert 40 < len(a) < 120  # about half of 40 queries x 4 passes


def test_difficulty_band_on_a_weak_teacher(store: Store) -> None:
    put(store, FIXTURE, CATS)
    band = {"teacher": "1.5b", "min_pass_rate": 0.0, "max_pass_rate": 0.0}
    [sel] = run_selection(store, recipe(difficulty_band=band), "band")
    assert {q for q, _ in members(store, "band")} == {"hard"}
    assert sel.counts["queries"]["out_of_band"] == 5  # easy, tie (.75), missing, ungraded, chat: no rate


def test_per_category_thresholds_move_the_selection(store: Store) -> None:
    put(store, {("q", "r1"): [0.5, 0.5, 0.95, 0.95]})
    assert run_selection(store, recipe(), "x")[0].counts["queries"]["no_pass"] == 1
    data = recipe().model_dump()
    data["grading"]["thresholds"]["math"] = 0.4
    lenient = Recipe.model_validate(data)
    [sel] = run_selection(store, lenient, "y")
    assert sel.counts["queries"]["challenging"] == 1 and len(sel.members) == 4


def test_stage_two_keeps_highest_cv_one_response_each(store: Store) -> None:
    put(store, FIXTURE, CATS)
    data = recipe().model_dump()
    data["selection"]["stage2"] = {"enabled": True, "max_instances": 2, "threshold": 0.99}
    [_, s2] = run_selection(store, Recipe.model_validate(data), "z")
    got = members(store, "z-stage2")
    assert {q for q, _ in got} == {"hard", "tie"} and len(got) == 2  # CV 1.73 and 1.0 (ties: missing)
    assert ("hard", 0) in got
    assert s2.rule["stage"] == 2


def test_stats_histograms_and_missing(store: Store) -> None:
    put(store, FIXTURE, CATS)
    stats = compute_stats(store, recipe())
    math_r1 = stats["categories"]["math"]["r1"]
    hist = {h["pass_rate"]: h["queries"] for h in math_r1["pass_rate_histogram"]}
    assert hist == {0.0: 1, 0.25: 1, 0.5: 3, 0.75: 0, 1.0: 1}
    assert math_r1["ungraded"] == 2 and math_r1["missing_passes"] == 2
    assert math_r1["cv_histogram"]["undefined"] == 1 and math_r1["cv_histogram"]["zero"] == 1
    rows = {r["query_id"]: r for r in per_query(store, recipe())}
    assert rows["tie"]["pass_rates"] == {"1.5b": 0.75, "r1": 0.5}
    assert rows["zero"]["cv"] is None and rows["hard"]["cv"] == pytest.approx(3**0.5)


def test_no_training_teacher_is_a_clear_error(store: Store) -> None:
    with pytest.raises(DeepDistillError, match="training teacher 'r1'"):
        compute_stats(store, recipe())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(
    st.text("abcdef", min_size=1, max_size=4),
    st.tuples(st.sampled_from(["math", "code", "science", "other"]),
              st.lists(st.sampled_from([0.0, 0.3, 0.8, 0.995, 1.0, 4.0, 5.0]), min_size=1, max_size=6)),
    min_size=1, max_size=25))
def test_selection_properties(tmp_path_factory: Any, data: dict[str, tuple[str, list[float]]]) -> None:
    with Store(tmp_path_factory.mktemp("p") / "p.db") as store:
        put(store, {(q, "r1"): s for q, (_, s) in data.items()}, {q: c for q, (c, _) in data.items()})
        r = Recipe.model_validate({**recipe().model_dump(),
                                   "selection": {**recipe().selection.model_dump(),
                                                 "stage2": {"enabled": True, "max_instances": 10}}})
        run_selection(store, r, "p")
        for name, stage in (("p", 1), ("p-stage2", 2)):
            rows = store.conn.execute(
                "SELECT q.category, g.verify_score, m.query_id FROM selection_members m"
                " JOIN grades g USING (query_id, teacher_id, pass_index) JOIN queries q USING (query_id)"
                " WHERE m.selection = ?", (name,)).fetchall()
            for cat, score, _ in rows:
                assert score > r.grading.threshold(cat)
            if stage == 2:
                qids = [q for _, _, q in rows]
                assert len(qids) == len(set(qids)) <= 10


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_export_reads_back_with_datasets(store: Store, tmp_path: Path, fmt: str) -> None:
    import datasets

    put(store, FIXTURE, CATS)
    run_selection(store, recipe(), "e")
    out = tmp_path / f"out.{fmt}"
    n = export(store, recipe(), "e", fmt, out)
    if fmt == "hf":
        ds = datasets.load_from_disk(str(out))
    else:
        ds = datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out),
                                   split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == n == len(members(store, "e"))
    row = next(r for r in ds if r["query_id"] == "hard")
    assert row["messages"][0] == {"role": "user", "content": "question hard"}
    assert row["messages"][1]["content"].startswith("<think>\nr\n</think>")
    assert row["pass_rates"]["1.5b"] == 0.0 and row["pass_rates"]["7b"] is None
    assert row["cv"] == pytest.approx(3**0.5) and row["verify_score"] == 1.0 and row["teacher"] == "r1"


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_export_replaces_only_its_own_output(store: Store, tmp_path: Path, fmt: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder or file the user owns is never removed or overwritten: `--out .` is an error naming it;
    an earlier export of this project is replaced; a dead export's temp folder is cleaned up."""
    put(store, FIXTURE, CATS)
    run_selection(store, recipe(), "e")
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    monkeypatch.chdir(precious)
    with pytest.raises(DeepDistillError, match="exists and is"):
        export(store, recipe(), "e", fmt, ".")
    with pytest.raises(DeepDistillError, match="exists and is"):
        export(store, recipe(), "e", fmt, precious / "notes.txt")
    assert (precious / "notes.txt").read_text() == "mine"
    out = tmp_path / "exports" / f"s.{fmt}"
    stale = out.parent / f".s.{fmt}.ddt-export-tmp-999999999-x"
    stale.mkdir(parents=True)
    first = export(store, recipe(), "e", fmt, out)
    assert not stale.exists()
    assert export(store, recipe(), "e", fmt, out) == first  # its own earlier output: replaced
    assert sorted(p.name for p in out.parent.iterdir() if ".ddt-export-tmp-" in p.name) == []
    if fmt == "jsonl":
        out.write_text(out.read_text() + "{}\n")  # edited by hand since: no longer ours to replace
        with pytest.raises(DeepDistillError, match="did not write"):
            export(store, recipe(), "e", fmt, out)
    else:
        (out / "my-notes.md").write_text("mine")  # a file the user added to the export's folder
        with pytest.raises(DeepDistillError, match="did not write"):
            export(store, recipe(), "e", fmt, out)
        assert (out / "my-notes.md").read_text() == "mine"
        (out / "my-notes.md").unlink()
        data = next(p for p in sorted(out.rglob("*.arrow")))
        data.write_bytes(data.read_bytes() + b"x")  # edited since
        with pytest.raises(DeepDistillError, match="not as the export wrote it"):
            export(store, recipe(), "e", fmt, out)


def test_export_unknown_selection_writes_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(DeepDistillError, match="no selection named 'nope'"):
        export(store, recipe(), "nope", "jsonl", tmp_path / "out" / "x.jsonl")
    assert not (tmp_path / "out").exists()


def test_selection_stores_rule_seed_and_counts(store: Store) -> None:
    put(store, FIXTURE, CATS)
    run_selection(store, recipe(seed=5), "r")
    rule, seed, counts, n, tokens = store.conn.execute(
        "SELECT rule, seed, counts, n_members, n_tokens FROM selections").fetchone()
    assert json.loads(rule)["cv_threshold"]["math"] == 0.05 and seed == 5
    assert json.loads(counts)["queries"]["challenging"] == 4 and tokens == 10 * n


def test_stats_missing_passes_when_everything_is_graded(store: Store) -> None:
    put(store, {("a", "r1"): [1, 0, 1, 1], ("b", "r1"): [1, 1], ("c", "r1"): [0]})
    r1 = compute_stats(store, recipe())["categories"]["math"]["r1"]
    assert r1["ungraded"] == 0 and r1["missing_passes"] == 2 + 3


def test_responses_keep_one_query_id_a_query_and_give_each_rows_own(tmp_path: Path) -> None:
    """Responses hold a query id per query; the ids of chosen rows (by mask or by row number) are each
    row's own, ungraded passes and eval queries left out."""
    from deepdistill_tui.core.difficulty.responses import load_responses

    with Store(tmp_path / "s.db") as s:
        put(s, {("qa", "r1"): [1.0, 0.0, None], ("qb", "r1"): [0.5], ("qc", "r1"): [0.0, 1.0, 1.0]})
        with s.write() as conn:
            conn.execute("UPDATE queries SET split = 'eval' WHERE query_id = 'qb'")
        r = load_responses(s, "id-r1")
    assert r.group_qids.tolist() == ["qa", "qc"] and r.counts.tolist() == [2, 3]
    assert r.query_ids.tolist() == ["qa", "qa", "qc", "qc", "qc"]
    assert r.pass_index.tolist() == [0, 1, 0, 1, 2]
    mask = np.array([False, True, True, False, True])
    assert r.row_query_ids(mask).tolist() == ["qa", "qc", "qc"]
    assert r.row_query_ids(np.array([4, 0, 2])).tolist() == ["qc", "qa", "qc"]


@pytest.mark.parametrize("variant", ["paper", "filters-band-keep"])
def test_selection_from_summaries_is_the_one_from_responses(tmp_path: Path, variant: str) -> None:
    """Deciding from the per-query summaries and writing members in SQL keeps exactly the responses
    that the rule applied to every response in memory keeps, counts and all: with the quality
    filters flagging many responses, a difficulty band, easy queries kept at random and Stage II cut
    at max_instances."""
    from deepdistill_tui.core.difficulty.selection import (
        compute_selection,
        save_selections,
        training_responses,
    )
    from tests.synthetic import write_am_files

    files = write_am_files(tmp_path / "am", 400, teachers=("7b", "r1"), passes=4, answer_chars=60)
    data = load_recipe("full-32b").model_dump()
    data["selection"]["difficulty_teachers"] = ["7b"]
    data["selection"]["stage2"]["max_instances"] = 40
    if variant != "paper":
        data["selection"]["quality"] = {"max_perplexity": 5.0, "max_ngram_count": 20, "ngram": 20}
        data["selection"]["difficulty_band"] = {"teacher": "7b", "min_pass_rate": 0.25, "max_pass_rate": 1.0}
        data["selection"]["easy_keep_probability"] = {"other": 0.5, "math": 0.3}
    r = Recipe.model_validate(data)
    with Store(tmp_path / "s.db") as s:
        from deepdistill_tui.core.data.released import import_released

        import_released(s, files)
        planned = compute_selection(s, r, "x")
        in_memory = compute_selection(s, r, "x", loaded=training_responses(s, r))
        assert [sel.bits is not None for sel in planned] == [True, True]
        assert [sel.bits for sel in in_memory] == [None, None]
        for a, b in zip(planned, in_memory, strict=True):
            assert a.counts == b.counts
            assert a.n_members == b.n_members > 0
            assert a.members == sorted(b.members)
        assert planned[1].counts["queries"]["candidates"] > 40 == planned[1].n_members
        if variant != "paper":
            assert planned[0].counts["quality_filters"]["removed"] > 100
            assert planned[0].counts["queries"]["out_of_band"] > 0
        fresh = compute_selection(s, r, "x")  # members left to SQLite, never read out
        save_selections(s, fresh)
        for sel, b in zip(fresh, in_memory, strict=True):
            assert sel._members is None
            assert members(s, sel.name) == {(q, p) for q, _, p, _ in b.members}
            assert s.scalar("SELECT n_members FROM selections WHERE name = ?", (sel.name,)) == b.n_members


def test_query_ids_that_hold_the_join_separator_are_read_a_row_each(store: Store) -> None:
    from deepdistill_tui.core.difficulty.selection import compute_selection, training_responses

    put(store, {("a\x1fb", "r1"): [1, 0, 0, 0], ("c", "r1"): [1, 1, 0, 0], ("d", "r1"): [1, 0, 1, 0]})
    r = recipe()
    planned = compute_selection(store, r, "x")
    in_memory = compute_selection(store, r, "x", loaded=training_responses(store, r))
    assert planned[0].bits is not None
    assert planned[0].members == sorted(in_memory[0].members)
    assert {q for q, *_ in planned[0].members} == {"a\x1fb", "c", "d"}


def test_passes_beyond_the_masks_select_from_the_responses(store: Store) -> None:
    """A query graded 70 times (more passes than a summary's 62-bit mask holds) is still selected
    exactly: the summaries step aside and the rule reads the responses; the stored members keep
    every pass, the 62nd and later included."""
    from deepdistill_tui.core.difficulty.selection import compute_selection, summary_facts, training_responses

    many = [1.0 if p % 3 else 0.0 for p in range(70)]
    put(store, {("many", "r1"): many, ("few", "r1"): [1, 0, 0, 0]})
    r = recipe()
    tid = training_responses(store, r)[0]
    assert summary_facts(store, r, tid) is None
    [sel] = run_selection(store, r, "s")
    assert sel.bits is None
    want = {("many", p) for p in range(70) if many[p]} | {("few", 0)}
    assert members(store, "s") == want
    assert store.scalar("SELECT n_members FROM selections WHERE name = 's'") == len(want)
    in_memory = compute_selection(store, r, "x", loaded=training_responses(store, r))
    assert {(q, p) for q, _, p, _ in in_memory[0].members} == want
