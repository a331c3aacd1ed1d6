from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from deepdistill_tui.core.data.am_import import am_query_id
from deepdistill_tui.core.data.released import import_am
from deepdistill_tui.core.errors import InputError
from deepdistill_tui.core.store.database import Store
from tests.conftest import data_counts
from tests.synthetic import write_am_files


def test_import_fills_the_same_tables_as_sampling(store: Store, tmp_path: Path) -> None:
    files = write_am_files(tmp_path, 50, passes=4)
    report = import_am(store, files)
    assert report.files == 5 * 3 * 4
    assert report.responses == 50 * 3 * 4 and report.new_queries == 50
    assert data_counts(store) == {"queries": 50, "teachers": 3, "samples": 600, "grades": 600,
                                  "selections": 0}
    names = {r[0] for r in store.conn.execute("SELECT name FROM teachers")}
    assert names == {"1.5b", "7b", "r1"}
    passes = store.conn.execute(
        "SELECT DISTINCT pass_index FROM samples ORDER BY pass_index").fetchall()
    assert [p[0] for p in passes] == [0, 1, 2, 3]
    # the think/answer split and the pass flag by the paper's thresholds
    reasoning, answer = store.conn.execute("SELECT reasoning, answer FROM samples LIMIT 1").fetchone()
    assert reasoning.startswith("Let me check") and answer.startswith("x = ")
    bad = store.scalar(
        "SELECT count(*) FROM grades g JOIN queries q USING (query_id) WHERE q.category = 'science'"
        " AND g.passed != (g.verify_score > 4.99)")
    assert bad == 0


def test_reimport_changes_nothing(store: Store, tmp_path: Path) -> None:
    files = write_am_files(tmp_path, 20)
    import_am(store, files)
    before = data_counts(store)
    again = import_am(store, files)
    assert again.new_queries == 0 and data_counts(store) == before


def test_record_fields(store: Store, tmp_path: Path) -> None:
    rec = {"question": "What is 2+2?", "answer": "<think>2 and 2</think><answer>\\boxed{4}</answer>",
           "question_source": "src", "ground_truth": "4", "verify_score": 1,
           "pass_rate_r1": 1.0, "ppl": 2.5, "model_name": "DeepSeek-R1", "test_case": {"x": 1}}
    path = tmp_path / "math_r1_3pass.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    import_am(store, [path])
    qid = am_query_id("math", "What is 2+2?")
    q = store.conn.execute("SELECT ground_truth, source, test_cases, origin FROM queries").fetchone()
    assert q == ("4", "src", '{"x": 1}', "am-import")
    s = store.conn.execute("SELECT query_id, teacher_id, pass_index, answer FROM samples").fetchone()
    assert s == (qid, "am-r1", 2, "\\boxed{4}")
    g = store.conn.execute("SELECT verify_score, passed, detail FROM grades").fetchone()
    assert g[0] == 1.0 and g[1] == 1 and json.loads(g[2])["ppl"] == 2.5
    assert store.scalar("SELECT ppl FROM samples") == 2.5
    assert store.conn.execute("SELECT teacher, pass_rate FROM released_pass_rates").fetchall() == [
        ("r1", 1.0)]


def _am(question: str, score: float = 1.0, answer: str = "<think>t</think>4") -> str:
    return json.dumps({"question": question, "answer": answer, "verify_score": score}) + "\n"


def test_identity_is_exact_text_within_a_category(store: Store, tmp_path: Path) -> None:
    """Case differences and the same text in two categories are distinct queries; a question twice
    in one file keeps its first record and is reported, never written over."""
    math = tmp_path / "math_r1_1pass.jsonl"
    math.write_text(_am("What is 2+2?") + _am("what is 2+2?", 0.0) + _am("What is 2+2?", 0.0, "dup"))
    science = tmp_path / "science_r1_1pass.jsonl"
    science.write_text(_am("What is 2+2?", 5.0))
    report = import_am(store, [math, science])
    assert report.new_queries == 3 and report.responses == 3 and report.duplicates == 1
    assert report.duplicates_per_file == {str(math): 1, str(science): 0}
    rows = store.conn.execute(
        "SELECT q.category, q.question, g.verify_score, s.response FROM queries q"
        " JOIN samples s USING (query_id) JOIN grades g USING (query_id, teacher_id, pass_index)"
        " ORDER BY q.category, q.question").fetchall()
    assert rows == [("math", "What is 2+2?", 1.0, "<think>t</think>4"),
                    ("math", "what is 2+2?", 0.0, "<think>t</think>4"),
                    ("science", "What is 2+2?", 5.0, "<think>t</think>4")]
    before = data_counts(store)
    again = import_am(store, [math, science])
    assert again.new_queries == 0 and data_counts(store) == before


@pytest.mark.parametrize("name", ["math_r1.jsonl", "poetry_r1_1pass.jsonl", "math_gpt_1pass.jsonl",
                                  "math_r1_0pass.jsonl"])
def test_bad_file_names(store: Store, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"question": "q", "answer": "a", "verify_score": 1}\n')
    with pytest.raises(InputError, match="file name must be CATEGORY_TEACHER_Kpass.jsonl"):
        import_am(store, [path])


@pytest.mark.parametrize(("line", "pattern"), [
    (b'{"question": "q2", "answer": "a", "verify_score": "high"}', r":2: field 'verify_score' must be"),
    (b'{"question": "q2", "verify_score": 1}', r":2: missing required field 'answer'"),
    (b'{"question": "q2", "answer": "a", "verify_score": 1', r":2: malformed JSON"),
    (b'{"question": "\xc3\x28", "answer": "a", "verify_score": 1}', r":2: invalid UTF-8"),
])
def test_strict_refuses_at_a_bad_line_and_rolls_back_every_file(store: Store, tmp_path: Path, line: bytes,
                                                                 pattern: str) -> None:
    good = write_am_files(tmp_path / "good", 10, categories=("math",), teachers=("r1",), passes=1)
    bad = tmp_path / "code_7b_1pass.jsonl"
    bad.write_bytes(b'{"question": "q1", "answer": "a", "verify_score": 1}\n' + line + b"\n")
    with pytest.raises(InputError, match=pattern):
        import_am(store, [*good, bad], strict=True)
    assert data_counts(store) == {"queries": 0, "teachers": 0, "samples": 0, "grades": 0,
                                  "selections": 0}


def test_import_streams_in_bounded_memory(store: Store, tmp_path: Path) -> None:
    """40k responses (~20 MB) are imported with a Python heap peak far below the file size."""
    files = write_am_files(tmp_path, 10_000, categories=("math",), passes=4, answer_chars=400)
    size = sum(f.stat().st_size for f in files)
    tracemalloc.start()
    import_am(store, files)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size / 3, (peak, size)
