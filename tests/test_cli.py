"""The headless CLI as a user runs it: a real process, a real database file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.synthetic import write_am_files


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepdistill_tui", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_ingest_then_run_skips_done_stage(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    out = cli("ingest", "--recipe", "tiny", "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ingest"]["kept"] > 50
    again = cli("run", "--recipe", "tiny", "--db", db, "--stages", "ingest")
    assert again.returncode == 0 and "skipped, already done" in again.stdout
    recipe = sqlite3.connect(db).execute("SELECT recipe FROM runs WHERE status = 'ok'").fetchone()[0]
    assert json.loads(recipe)["name"] == "tiny"


def test_import_am_cli(tmp_path: Path) -> None:
    files = write_am_files(tmp_path / "am", 30, categories=("math", "code"))
    out = cli("import-am", *map(str, files), "--db", str(tmp_path / "x.db"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["responses"] == 30 * 3 * 4


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ntypo: 1\n")
    for args in (["ingest", "--recipe", str(recipe)], ["ingest", "--recipe", "nope"],
                 ["run", "--stages", "bogus"], ["import-am", str(tmp_path / "math_r1.jsonl")]):
        out = cli(*args, "--db", str(tmp_path / "e.db"))
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deepdistill-tui: error: "), out.stderr


def test_recipes_lists_shipped_recipes() -> None:
    out = cli("recipes")
    assert out.returncode == 0
    assert {line.split(":")[0] for line in out.stdout.splitlines()} >= {"tiny", "small", "full-32b",
                                                                       "full-72b"}


def test_global_options_work_before_or_after_the_command(tmp_path: Path) -> None:
    """`--db` and `--recipe` where --help shows them (before the command) and after it; a missing
    recipe is an error, never a silent fall-back to tiny."""
    for i, args in enumerate((["--db", "{db}", "ingest", "--json"], ["ingest", "--db", "{db}", "--json"],
                              ["--recipe", "tiny", "--db", "{db}", "ingest", "--json"])):
        db = tmp_path / f"g{i}.db"
        r = cli(*(a.format(db=db) for a in args), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert db.exists() and not (tmp_path / "deepdistill.db").exists()
    for args in (["--recipe", "missing.yaml", "ingest"], ["ingest", "--recipe", "missing.yaml"],
                 ["--recipe", "missing.yaml", "grade-file", "--input", "in", "--output", "out"]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and "missing.yaml" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "deepdistill.db").exists() and not (tmp_path / "out").exists()
