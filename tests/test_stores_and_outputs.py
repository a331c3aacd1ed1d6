"""Outputs and stores under misuse (the red team's findings 9-13): no run's output mixed with another's,
no foreign database touched, no store created by a typo, one lock per real file, no shard folder or
import or evaluation silently double-counted. Each failed on the code before the fix."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.store.database import Store, lock_held, stage_lock


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepdistill_tui", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_grade_file_runs_with_one_output_never_mix(tmp_path: Path) -> None:
    """Both finish, each wrote its own temp file, and the output is one complete run's records."""
    rows = [{"id": i, "category": "math", "response": f"\\boxed{{{i % 7}}}", "ground_truth": str(i % 5)}
            for i in range(3000)]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [sys.executable, "-m", "deepdistill_tui", "grade-file", "--input", str(src), "--output", str(dst),
            "--workers", "1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(3000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_a_dead_runs_partial_output_is_removed_by_the_next(tmp_path: Path) -> None:
    from deepdistill_tui.core.grading.stage import partial_path

    dst = tmp_path / "out.jsonl"
    dead = tmp_path / ".out.jsonl.999999999-x.partial"  # no such pid
    dead.write_text("half a line")
    mine = partial_path(dst)
    assert not dead.exists() and mine.exists() and mine.name.startswith(".out.jsonl.")


def foreign_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("command", [["stats"], ["selections"], ["ingest"], ["grade"]])
def test_another_programs_database_is_refused_byte_for_byte_untouched(tmp_path: Path,
                                                                     command: list[str]) -> None:
    db = tmp_path / "theirs.db"
    foreign_db(db)
    before = digest(db)
    r = cli(*command, "--db", str(db))
    assert r.returncode == 2 and "another program" in r.stderr and "invoices" in r.stderr, r.stderr
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.db"]  # no -wal, no -shm


@pytest.mark.parametrize("command", [["stats"], ["selections"], ["select", "--name", "x"],
                                     ["export", "--selection", "x", "--out", "{dir}/x.jsonl"],
                                     ["eval"], ["shard", "--shards", "2", "--out", "{dir}/sh"]])
def test_a_mistyped_db_leaves_no_store_behind(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "typo.db"
    r = cli(*[a.format(dir=tmp_path) for a in command], "--db", str(db))
    assert r.returncode == 2 and "no store here" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_to_the_store_takes_the_same_lock(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    Store(real).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    waited: list[str] = []
    with stage_lock(real, "grader", waited.append):
        assert lock_held(link, "grader") and lock_held(tmp_path / "." / "real.db", "grader")
    assert not lock_held(link, "grader") and waited == []


def test_a_lock_path_that_is_a_folder_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    (tmp_path / "s.db.grader.lock").mkdir()
    with pytest.raises(DeepDistillError, match="is a directory"), stage_lock(db, "grader", print):
        pass


def test_shard_refuses_a_folder_of_another_split(tmp_path: Path) -> None:
    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.recipe import load_recipe

    db = tmp_path / "main.db"
    with Store(db) as s:
        ingest(s, load_recipe("tiny").data)
    assert cli("shard", "--db", str(db), "--shards", "5", "--out", str(tmp_path / "sh")).returncode == 0
    r = cli("shard", "--db", str(db), "--shards", "3", "--out", str(tmp_path / "sh"))
    assert r.returncode == 2 and "another split" in r.stderr, r.stderr
    assert len(list((tmp_path / "sh").glob("shard-*.db"))) == 5
    again = cli("shard", "--db", str(db), "--shards", "5", "--out", str(tmp_path / "sh"))
    assert again.returncode == 0, again.stderr  # the same split again is harmless


def test_a_file_given_twice_is_imported_once(tmp_path: Path) -> None:
    from deepdistill_tui.core.data.released import import_am
    from tests.synthetic import write_am_files

    files = write_am_files(tmp_path / "am", 20, categories=("math",), passes=1)
    with Store(tmp_path / "s.db") as s:
        first = import_am(s, [*files, files[0], str(files[0].parent / "." / files[0].name)])
        assert first.files == len(files) and first.responses == s.count("samples") == 20 * len(files)
        again = import_am(s, files)
        assert again.responses == 0 and again.new_queries == 0


def test_a_smaller_evaluation_never_replaces_a_larger_one(tmp_path: Path) -> None:
    from deepdistill_tui.core.evaluation.evaluate import _store_result, comparison
    from deepdistill_tui.core.recipe import load_recipe

    recipe = load_recipe("tiny")
    full = [(f"q{i}", "math") for i in range(207)]
    with Store(tmp_path / "s.db") as s:
        for model, share in (("base", 0), ("run-1", 1)):
            _store_result(s, recipe, model, full, {q: share * recipe.eval.k for q, _ in full}, {}, 1.0,
                          "llama.cpp", None)
        quick = full[:12]
        _store_result(s, recipe, "run-1", quick, {}, {}, 1.0, "llama.cpp", None)
        assert s.count("evals") == 3
        rows = {r["model"]: r for r in comparison(s, recipe)}
    assert rows["run-1"]["problems"] == 207 and rows["run-1"]["pass_at_1"] == 1.0
    assert rows["run-1"]["delta_vs_base"]["problems"] == 207


def test_eval_of_a_run_whose_files_are_gone_is_one_line(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as s:
        run_id = s.start_run("train", "tiny", None, {"selection": "tiny"})
        s.finish_run(run_id, "ok", {"gguf": str(tmp_path / "gone.gguf"), "output": str(tmp_path / "gone")})
    r = cli("eval", "--model", run_id, "--db", str(tmp_path / "s.db"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "gone.gguf" in r.stderr and "train again" in r.stderr


def test_an_evaluation_says_how_many_answers_no_sandbox_graded(tmp_path: Path) -> None:
    """Answers whose code never ran count as failures in the figure, and the figure says so: stored per
    problem, summed overall and per category, and printed beside the table."""
    import io

    from rich.console import Console

    from deepdistill_tui.cli.training import print_evals
    from deepdistill_tui.core.evaluation.evaluate import _store_result, comparison
    from deepdistill_tui.core.recipe import load_recipe

    recipe = load_recipe("tiny")
    queries = [("m1", "math"), ("c1", "code"), ("c2", "code")]
    with Store(tmp_path / "s.db") as s:
        _store_result(s, recipe, "base", queries, {"m1": recipe.eval.k}, {"c1": 2, "c2": recipe.eval.k},
                      1.0, "llama.cpp", None)
        row = comparison(s, recipe)[0]
    missing = 2 + recipe.eval.k
    assert row["not_graded"] == missing and row["by_category"]["code"]["not_graded"] == missing
    assert row["by_category"]["math"]["not_graded"] == 0
    out = io.StringIO()
    print_evals(Console(file=out, width=100), [row])
    assert f"{2 + recipe.eval.k} answers were not graded" in out.getvalue()


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Any:
    """A folder with a store in it, seen through a read-only bind mount (as root, mode bits stop
    nothing: only a read-only file system does)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    Store(src / "s.db").close()
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount a read-only folder here: {mounted.stderr.strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode:
            pytest.skip("cannot remount the bind mount read-only here")
        yield src, ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_a_read_only_store_and_output_folder_are_one_line(read_only_folder: Any, tmp_path: Path) -> None:
    src, ro = read_only_folder
    before = sorted(p.name for p in src.iterdir())
    r = cli("stats", "--db", str(ro / "s.db"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "read-only" in r.stderr and "s.db" in r.stderr
    line = '{"id": 1, "category": "math", "response": "x", "ground_truth": "1"}\n'
    (tmp_path / "in.jsonl").write_text(line)
    r = cli("grade-file", "--input", str(tmp_path / "in.jsonl"), "--output", str(ro / "out.jsonl"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "out.jsonl" in r.stderr and "cannot be written" in r.stderr
    assert sorted(p.name for p in src.iterdir()) == before
