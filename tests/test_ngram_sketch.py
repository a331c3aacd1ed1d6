"""The quality filters counted as an import parses its rows: the n-gram sketch kept for the next
import to add to, the perplexity flags added to. The flags stay exact, no text is read back that need
not be, and counts that missed a write are never trusted."""

from __future__ import annotations

import json
from pathlib import Path

from deepdistill_tui.core.difficulty.quality import _compute_flags
from deepdistill_tui.core.pipeline.params import ImportParams
from deepdistill_tui.core.pipeline.runner import run_stage
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store

PHRASE = "alpha beta gamma"
"""A 3-gram that the filter below allows twice across the data and drops from the third time."""


def recipe(max_perplexity: float | None = None) -> Recipe:
    data = load_recipe("tiny").model_dump()
    data["selection"]["quality"] = {"max_perplexity": max_perplexity, "ngram": 3, "max_ngram_count": 2}
    return Recipe.model_validate(data)


def am_file(folder: Path, pass_no: int, answers: dict[int, str], ppl: dict[int, float] | None = None) -> str:
    """A flat AM file of query number -> answer (perplexity 2 unless ``ppl`` says), named as the
    release names them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"math_r1_{pass_no}pass.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i, answer in answers.items():
            fh.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": answer, "category": "math",
                                 "verify_score": 1.0, "ground_truth": str(2 * i),
                                 "ppl": (ppl or {}).get(i, 2.0)}) + "\n")
    return str(path)


def words(i: int) -> str:
    """An answer of words no other answer shares."""
    return " ".join(f"w{i}x{j}" for j in range(6))


def text_reads(store: Store, marker: str = "SELECT response FROM samples") -> list[str]:
    """Collects each statement that reads the samples' text (or holds ``marker``) as they run."""
    seen: list[str] = []
    store.conn.set_trace_callback(lambda sql: seen.append(sql) if marker in sql else None)
    return seen


def flags(store: Store, kind: str = "ngram") -> set[tuple[str, int]]:
    return {(q, int(p)) for q, p in store.conn.execute(
        "SELECT query_id, pass_index FROM quality_flags WHERE kind = ?", (kind,))}


def recomputed(store: Store, r: Recipe, kind: str = "ngram") -> set[tuple[str, int]]:
    """The flags worked out from every response, with nothing kept or added."""
    tid = store.scalar("SELECT teacher_id FROM teachers")
    store.conn.execute("BEGIN")
    try:
        found = _compute_flags(store, r.selection.quality, tid)[1]
    finally:
        store.conn.execute("COMMIT")
    return {(q, p) for q, p, k in found if k == kind}


def query_of(store: Store, i: int) -> str:
    return str(store.scalar("SELECT query_id FROM queries WHERE question = ?", (f"What is {i} plus {i}?",)))


def test_the_next_import_adds_to_the_kept_sketch_and_reads_no_text(store: Store, tmp_path: Path) -> None:
    r = recipe()
    reads = text_reads(store)
    first = {i: words(i) for i in range(40)} | {0: f"{PHRASE} {words(0)}", 1: f"{words(1)} {PHRASE}"}
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, first),)))
    assert len(reads) == 1  # the first import counts its texts from the store, and keeps the sketch
    assert flags(store) == set() == recomputed(store, r)
    reads.clear()

    # Answers that share nothing: counted as parsed and added to the kept sketch, where no cell
    # passes 2, so nothing is read back.
    unrelated = {i: words(100 + i) for i in range(9)}
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "b", 2, unrelated),)))
    assert reads == []
    assert flags(store) == set() == recomputed(store, r)
    reads.clear()

    # A third use of the phrase, in the next import, makes it frequent: the answers of the first
    # import that hold it are dropped too, and the texts are read once (the kept sketch plus this
    # import's stands for the first pass).
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "c", 3, {5: f"so {PHRASE}"}),)))
    assert len(reads) == 1
    expected = {(query_of(store, 0), 0), (query_of(store, 1), 0), (query_of(store, 5), 2)}
    assert flags(store) == expected == recomputed(store, r)


def test_a_sketch_that_missed_a_write_is_counted_again(store: Store, tmp_path: Path) -> None:
    """A row written by anything but the import (here a bare INSERT, after a delete) is not in the
    kept sketch: trusted, the phrase would count 2 and drop nothing."""
    r = recipe()
    first = {i: words(i) for i in range(10)} | {0: f"{PHRASE} {words(0)}", 1: f"{PHRASE} {words(1)}"}
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, first),)))
    tid = store.scalar("SELECT teacher_id FROM teachers")
    with store.write() as conn:  # as many samples as before, one of them with the phrase
        conn.execute("DELETE FROM samples WHERE query_id = ?", (query_of(store, 2),))
        conn.execute("INSERT INTO samples (query_id, teacher_id, pass_index, response, created_at)"
                     " VALUES (?, ?, 3, ?, 0)", (query_of(store, 3), tid, f"and {PHRASE}"))
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "b", 2, {4: words(99)}),)))
    expected = {(query_of(store, 0), 0), (query_of(store, 1), 0), (query_of(store, 3), 3)}
    assert flags(store) == expected == recomputed(store, r)


def test_an_unsketched_insert_is_counted_again(store: Store, tmp_path: Path) -> None:
    r = recipe()
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, {0: f"{PHRASE} {words(0)}"}),)))
    tid = store.scalar("SELECT teacher_id FROM teachers")
    with store.write() as conn:
        conn.execute("INSERT INTO samples (query_id, teacher_id, pass_index, response, created_at)"
                     " VALUES (?, ?, 3, ?, 0)", (query_of(store, 0), tid, f"then {PHRASE}"))
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "b", 2, {0: f"{PHRASE} again"}),)))
    assert flags(store) == {(query_of(store, 0), p) for p in (0, 1, 3)} == recomputed(store, r)


def test_an_import_that_adds_nothing_reads_nothing(store: Store, tmp_path: Path) -> None:
    """The same rows again from another path: every one a duplicate, the flags still hold."""
    r = recipe()
    answers = {i: f"{PHRASE} {words(i)}" for i in range(3)}
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, answers),)))
    reads = text_reads(store)
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "b", 1, answers),)))
    assert reads == []
    assert len(flags(store)) == 3


def test_perplexity_flags_are_added_to_without_a_scan(store: Store, tmp_path: Path) -> None:
    r = recipe(max_perplexity=10)
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, {i: words(i) for i in range(5)},
                                                        {1: 50.0}),)))
    scans = text_reads(store, "ppl >")
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "b", 2, {3: words(30), 4: words(40)},
                                                        {4: 60.0}),)))
    assert scans == []
    assert flags(store, "perplexity") == {(query_of(store, 1), 0), (query_of(store, 4), 1)}
    assert flags(store, "perplexity") == recomputed(store, r, "perplexity")

    # An edit in between (a perplexity scored again) is not in the import's counts: all are read.
    scans.clear()
    with store.write() as conn:
        conn.execute("UPDATE samples SET ppl = 70 WHERE query_id = ?", (query_of(store, 2),))
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "c", 3, {0: words(50)}),)))
    assert len(scans) == 1
    assert (query_of(store, 2), 0) in flags(store, "perplexity")
    assert flags(store, "perplexity") == recomputed(store, r, "perplexity")


def test_the_first_import_flags_perplexity_without_a_scan(store: Store, tmp_path: Path) -> None:
    r = recipe(max_perplexity=10)
    scans = text_reads(store, "ppl >")
    run_stage(store, "import", r, ImportParams((am_file(tmp_path / "a", 1, {i: words(i) for i in range(5)},
                                                        {2: 11.0}),)))
    assert scans == []
    assert flags(store, "perplexity") == {(query_of(store, 2), 0)} == recomputed(store, r, "perplexity")
