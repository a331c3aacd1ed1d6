"""`import`: released data in each of its layouts, from each kind of source, surviving its bad rows,
and resuming after a kill without losing or doubling a row. Every file is written here, in the real
field structure, with this project's own text."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.data.released import import_released
from deepdistill_tui.core.difficulty.selection import training_responses
from deepdistill_tui.core.difficulty.stats import compute_stats
from deepdistill_tui.core.errors import DeepDistillError, InputError
from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.store.database import Store
from tests.conftest import data_counts
from tests.synthetic import write_am_files


def am_row(i: int, score: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"question": f"What is {i} + {i}?",
            "answer": f"<think>add</think><answer>\\boxed{{{2 * i}}}</answer>",
            "ground_truth": str(2 * i), "verify_score": score, "ppl": 1.5, "pass_rate_r1": 1.0, **extra}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def conversation(i: int, score: float = 1.0, category: str = "math") -> dict[str, Any]:
    return {"system": "", "conversations": [
        {"from": "human", "value": f"Double {i}.", "info": None},
        {"from": "assistant", "value": f"<think>twice {i}</think><answer>{2 * i}</answer>",
         "info": {"source": "own", "category": category, "ground_truth": str(2 * i), "test_case": None,
                  "instruction_constrain": None, "think_content": f"twice {i}", "answer_content": str(2 * i),
                  "verify_score": score, "model_name": "Qwen/Qwen3-235B-A22B", "ppl": 2.0}}]}


def openr1_row(i: int, verdicts: list[Any]) -> dict[str, Any]:
    return {"problem": f"Halve {2 * i}.", "answer": str(i),
            "generations": [f"<think>half</think>\\boxed{{{i if ok else i + 1}}}" for ok in verdicts],
            "correctness_math_verify": verdicts}


# ---------------------------------------------------------------- formats and sources


def test_am_from_jsonl_parquet_and_a_saved_datasets_folder_lands_the_same(tmp_path: Path) -> None:
    import datasets

    rows = [am_row(i) for i in range(30)]
    jsonl = write_jsonl(tmp_path / "j" / "math_r1_1pass.jsonl", rows)
    parquet = tmp_path / "p" / "math_r1_1pass.parquet"
    parquet.parent.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{**r, "teacher": "r1", "pass": 1, "category": "math"} for r in rows]) \
        .save_to_disk(str(saved))
    stores = {}
    for name, src in (("jsonl", jsonl), ("parquet", parquet), ("disk", saved)):
        with Store(tmp_path / f"{name}.db") as s:
            report = import_released(s, [src], fmt="auto" if name != "disk" else "am")
            assert report.responses == 30 and report.skipped == {}, (name, report)
            stores[name] = s.conn.execute(
                "SELECT query_id, teacher_id, pass_index, verify_score FROM grades ORDER BY 1").fetchall()
    assert stores["jsonl"] == stores["parquet"] == stores["disk"]
    assert {r[1] for r in stores["jsonl"]} == {"am-r1"}


def test_am_conversations_are_one_verified_response_and_say_they_have_no_pass_rate(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "math.jsonl", [conversation(i, float(i % 2)) for i in range(10)])
    with Store(tmp_path / "s.db") as s:
        report = import_released(s, [src], fmt="am-conversations")
        assert (report.responses, report.new_queries) == (10, 10)
        teachers = s.conn.execute("SELECT DISTINCT teacher_id FROM samples").fetchall()
        assert teachers == [("amc-Qwen3-235B-A22B",)]
        data = load_recipe("tiny").model_dump()
        data["teachers"].append({"name": "Qwen3-235B-A22B", "backend": "am_import"})
        data["selection"]["training_teacher"] = "Qwen3-235B-A22B"
        data["selection"]["difficulty_teachers"] = []
        recipe = load_recipe("tiny").model_validate(data)
        assert compute_stats(s, recipe, lengths=False)["single_response_teachers"] == ["Qwen3-235B-A22B"]
        with pytest.raises(DeepDistillError, match="one verified response per query"):
            training_responses(s, recipe)


def test_generations_with_a_verdict_each_give_pass_rates(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "openr1.jsonl", [openr1_row(1, [True, False, True, True]),
                                                  openr1_row(2, [False, False])])
    with Store(tmp_path / "s.db") as s:
        report = import_released(s, [src], fmt="generations", category="math", teacher="deepseek-ai/R1",
                                 columns={"question": "problem", "responses": "generations",
                                          "scores": "correctness_math_verify", "ground_truth": "answer"})
        assert (report.responses, report.new_queries) == (6, 2)
        rates = dict(s.conn.execute("SELECT q.question, avg(g.passed) FROM grades g JOIN queries q"
                                    " USING (query_id) WHERE g.teacher_id = 'gen-R1' GROUP BY 1"))
        assert rates == {"Halve 2.": 0.75, "Halve 4.": 0.0}
        assert s.scalar("SELECT ground_truth FROM queries WHERE question = 'Halve 2.'") == "1"


def test_a_streamed_import_of_a_saved_datasets_folder_holds_no_table_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stream through in chunks: the Python heap holds a chunk, never the table (6 MB here)."""
    import tracemalloc

    import datasets

    from deepdistill_tui.core.data import released

    monkeypatch.setattr(released, "CHUNK", 300)

    rows = [{**am_row(i), "answer": "<think>" + "x" * 2000 + "</think>ok", "teacher": "r1", "pass": 1,
             "category": "code"} for i in range(3000)]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    size = sum(f.stat().st_size for f in saved.rglob("*.arrow"))
    with Store(tmp_path / "s.db") as s:
        tracemalloc.start()
        report = import_released(s, [saved], fmt="am")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert report.responses == 3000
    assert peak < size / 2, (peak, size)


# ---------------------------------------------------------------- bad rows


def test_bad_rows_cost_one_counted_line_each_not_the_import(tmp_path: Path) -> None:
    good = [am_row(i) for i in range(8)]
    bad = [am_row(100, None), '{"question": "nan", "answer": "a", "verify_score": NaN}', am_row(101, 7),
           am_row(102, 1.0, category="code"), "[1, 2]"]
    src = write_jsonl(tmp_path / "math_r1_1pass.jsonl", [good[0], *bad[:3], *good[1:4], bad[3], bad[4],
                                                          *good[4:]])
    with src.open("ab") as fh:  # a line over 16 MB, then a last line cut off mid-record
        fh.write(b'{"question": "' + b"y" * (17 << 20) + b'", "answer": "a", "verify_score": 1}\n')
        fh.write(b'{"question": "cut", "answer": "a", "verif')
    with Store(tmp_path / "s.db") as s:
        report = import_released(s, [src])
        assert report.responses == 8
        assert dict(report.skipped) == {"no_score": 1, "bad_json": 1, "score_out_of_range": 1,
                                        "category_mismatch": 1, "not_an_object": 1, "line_too_long": 1,
                                        "truncated": 1}
        lines = [e.split(": ")[0] for e in report.examples]
        assert lines == [f"{src}:{n}" for n in (2, 3, 4, 8, 9, 14, 15)]
        assert s.count("samples") == 8
    with Store(tmp_path / "strict.db") as s, pytest.raises(InputError, match=r"math_r1_1pass.jsonl:2: "
                                                                          r"field 'verify_score' is null"):
        import_released(s, [src], strict=True)
    with Store(tmp_path / "strict.db") as s:
        assert data_counts(s)["samples"] == 0


def test_a_source_of_only_bad_rows_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "math_r1_1pass.jsonl", [am_row(1, "high"), am_row(2, None)])
    db = tmp_path / "s.db"
    proc = subprocess.run([sys.executable, "-m", "deepdistill_tui", "import", str(src), "--db", str(db)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "none of the 2 rows could be imported" in proc.stderr and "math_r1_1pass.jsonl:1" in proc.stderr
    with Store(db) as s:
        assert data_counts(s) == {"queries": 0, "teachers": 0, "samples": 0, "grades": 0, "selections": 0}
        assert s.count("imports") == 0


def test_the_same_file_twice_adds_nothing_and_is_not_read_again(tmp_path: Path) -> None:
    files = write_am_files(tmp_path / "am", 50, categories=("math",), teachers=("r1",), passes=2)
    with Store(tmp_path / "s.db") as s:
        first = import_released(s, files)
        again = import_released(s, [*files, str(files[0])])
        assert first.responses == 100 and again.responses == 0 and again.already_imported == 2
        assert again.rows == 0  # finished sources are not read


def test_each_query_is_staged_once_and_forgetting_them_costs_no_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query in four files (two teachers, two passes) is staged once, not once per response; an
    import that outgrows its memory of staged ids stages some twice, and still lands every query once
    with every sample's query present."""
    from deepdistill_tui.core.data import released

    files = write_am_files(tmp_path / "am", 30, categories=("math",), teachers=("r1", "7b"), passes=2)
    staged: list[int] = []
    move = released._move

    def counted(conn: Any, sources: Any, report: Any) -> None:
        staged.append(conn.execute("SELECT count(*) FROM staged_queries").fetchone()[0])
        move(conn, sources, report)

    monkeypatch.setattr(released, "_move", counted)
    for name, recent in (("all.db", released.RECENT), ("forgetful.db", 7)):
        monkeypatch.setattr(released, "RECENT", recent)
        with Store(tmp_path / name) as s:
            report = import_released(s, files)
            assert report.new_queries == 30 and s.count("queries") == 30 and s.count("samples") == 120
            assert s.scalar("SELECT count(*) FROM samples LEFT JOIN queries q USING (query_id)"
                            " WHERE q.query_id IS NULL") == 0
    assert staged[0] == 30 and 30 < staged[1] <= 120, staged


# ---------------------------------------------------------------- worker processes


_LOOP = " ".join(f"step{j}" for j in range(25))  # a 25-token passage repeated across the files


def _looping_files(tmp_path: Path) -> list[Path]:
    """Three pass files of one teacher: every third answer holds the same passage (14 times a file,
    so only the three files together pass the 20-gram limit of 20), every seventh a perplexity above
    the limit, and in the second file a bad row and a repeated record."""
    files = []
    for k in (1, 2, 3):
        rows: list[Any] = [am_row(i, 1.0 if (i + k) % 2 else 0.0, ppl=25.0 if i % 7 == 0 else 1.5,
                                  answer=f"<think>{_LOOP if i % 3 == 0 else f'add {i} {k}'}</think>{2 * i}")
                           for i in range(40)]
        if k == 2:
            rows += [am_row(999, None), rows[5]]
        files.append(write_jsonl(tmp_path / f"math_r1_{k}pass.jsonl", rows))
    return files


def _store_dump(s: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table an import writes, less the times it was written."""
    return {t: s.conn.execute(sql).fetchall() for t, sql in {
        "queries": "SELECT query_id, question, category, ground_truth, origin FROM queries ORDER BY 1",
        "samples": "SELECT query_id, teacher_id, pass_index, response, reasoning, answer, ppl FROM samples"
                   " ORDER BY 1, 2, 3",
        "grades": "SELECT query_id, teacher_id, pass_index, verify_score, passed, detail FROM grades"
                  " ORDER BY 1, 2, 3",
        "summaries": "SELECT * FROM score_summaries ORDER BY 1, 2",
        "tokens": "SELECT * FROM sample_tokens ORDER BY 1, 2, 3",
        "versions": "SELECT teacher_id, version, n_samples FROM teacher_versions ORDER BY 1",
        "flags": "SELECT * FROM quality_flags ORDER BY 1, 2, 3, 4",
        "sketches": "SELECT teacher_id, ngram, texts, version, cells FROM ngram_sketches ORDER BY 1",
        "imports": "SELECT source, format, rows_done, finished, report FROM imports ORDER BY 1",
    }.items()}


def test_files_staged_by_worker_processes_land_as_if_staged_here(tmp_path: Path) -> None:
    """A second import, its two files staged by two worker processes that count the quality filters'
    sketch into forks: every table equals the import done in this process alone, the flags (which
    only all three files together raise) included."""
    from deepdistill_tui.core.data.released import Options, expand_sources, stage_workers
    from deepdistill_tui.core.difficulty.quality import Arrivals
    from deepdistill_tui.core.pipeline.params import ImportParams
    from deepdistill_tui.core.pipeline.runner import run_stage
    from deepdistill_tui.core.recipe import QualityFilters

    files = _looping_files(tmp_path)
    later = expand_sources(map(str, files[1:]))
    with Store(tmp_path / "c.db") as s:
        assert stage_workers(later, 2, Options("am", on_samples=Arrivals(s, QualityFilters()))) == 2
    assert stage_workers(later, None, Options("am")) == 1  # kilobytes: not worth a process
    recipe = load_recipe("tiny")
    dumps, reports = [], []
    for workers in (1, 2):
        with Store(tmp_path / f"w{workers}.db") as s:
            run_stage(s, "import", recipe, ImportParams((str(files[0]),), workers=1))
            done = run_stage(s, "import", recipe, ImportParams(tuple(map(str, files[1:])), workers=workers))
            reports.append({k: v for k, v in done.summary["import_am"].items()
                            if k not in ("seconds", "responses_per_s")})
            dumps.append(_store_dump(s))
    assert reports[0] == reports[1]
    assert reports[1]["responses"] == 80 and reports[1]["skipped"] == {"no_score": 1}
    assert reports[1]["duplicates"] == 1
    for table in dumps[0]:
        assert dumps[1][table] == dumps[0][table], table
    kinds = {kind for *_, kind in dumps[1]["flags"]}
    assert {"ngram", "perplexity"} <= kinds, kinds


# ---------------------------------------------------------------- kill -9 and resume


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_mid_import_then_resume_loses_and_doubles_nothing(tmp_path: Path, workers: int) -> None:
    """A 60k-row import killed once its first chunks are committed, then run again: the store equals an
    import that was never interrupted, row for row. With two worker processes staging, they die with
    the import: nothing is written after the kill."""
    files = write_am_files(tmp_path / "am", 30_000, categories=("math",), teachers=("r1",), passes=2)
    db = tmp_path / "killed.db"
    cmd = [sys.executable, "-m", "deepdistill_tui", "import", *map(str, files), "--db", str(db),
           "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=0.1) as conn:
                    committed = conn.execute("SELECT coalesce(sum(rows_done), 0) FROM imports").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if committed:
                break
    assert proc.poll() is None, "the import finished before it could be killed: make the files bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def progress() -> tuple[int, int]:
        with sqlite3.connect(db, timeout=5) as conn:
            return (conn.execute("SELECT coalesce(sum(rows_done), 0) FROM imports").fetchone()[0],
                    conn.execute("SELECT count(*) FROM staged_samples").fetchone()[0])

    time.sleep(0.5)
    before = progress()
    time.sleep(1.5)
    assert progress() == before, "a worker went on writing after the import was killed"
    with Store(db) as s:  # committed chunks wait in the staging tables for the end of the import
        assert 0 < s.count("staged_samples") + s.count("samples") < 60_000
    rerun = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed"] >= 1
    with Store(tmp_path / "clean.db") as clean:
        import_released(clean, files)
        expected = clean.conn.execute("SELECT query_id, teacher_id, pass_index, verify_score, passed"
                                      " FROM grades ORDER BY 1, 2, 3").fetchall()
    with Store(db) as s:
        got = s.conn.execute("SELECT query_id, teacher_id, pass_index, verify_score, passed"
                             " FROM grades ORDER BY 1, 2, 3").fetchall()
        assert got == expected and s.count("samples") == 60_000 and s.count("staged_samples") == 0
        assert s.scalar("SELECT count(*) FROM imports WHERE finished = 1") == 2


def test_am_small_imports_its_slice_and_selects_with_no_sampling(tmp_path: Path) -> None:
    """The am-small recipe on files of the release's shape: each file read up to its limit, nothing
    sampled, the paper's selection over R1's imported verdicts."""
    from deepdistill_tui.core.difficulty.selection import SelectResult
    from deepdistill_tui.core.pipeline.runner import run_pipeline
    from deepdistill_tui.core.teachers.sample import SampleResult

    write_am_files(tmp_path / "am", 400, categories=("math", "code"), teachers=("r1",), passes=4)
    data = load_recipe("am-small").model_dump(mode="json")
    data["data"]["sources"] = [{**s, "path": str(tmp_path / "am" / Path(s["path"]).name), "limit": 150}
                               for s in data["data"]["sources"] if s["format"] == "am"]
    recipe = load_recipe("am-small").model_validate(data)
    with Store(tmp_path / "s.db") as s:
        done = run_pipeline(s, recipe, ["ingest", "sample", "grade", "select"])
        assert s.count("samples") == 2 * 4 * 150  # two categories, four passes, the first 150 rows each
        assert done["sample"].typed(SampleResult).reports == []
        kept = done["select"].typed(SelectResult).selections[0]
        assert 0 < len(kept.members) < s.count("samples")
        assert {m[1] for m in kept.members} == {"am-r1"}
