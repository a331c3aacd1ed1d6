"""Bad input, table-driven: every case exits 2 with one line that names the place (file and line, recipe
key, path or name) and leaves the store's data as it was."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.store.database import Store
from tests.conftest import REPO

DATA_TABLES = ("queries", "teachers", "samples", "grades", "selections", "selection_members", "evals",
               "released_pass_rates")


def fingerprint(db: Path) -> str:
    """A hash of every data table's rows (runs keep a log of failed attempts and are left out)."""
    conn = sqlite3.connect(db)
    h = hashlib.sha256()
    for table in DATA_TABLES:
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
            h.update(repr(row).encode())
    conn.close()
    return h.hexdigest()


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def tiny_yaml(**replace: str) -> str:
    text = (REPO / "recipes" / "tiny.yaml").read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


GOOD = '{"id": 1, "category": "math", "response": "\\\\boxed{4}", "ground_truth": "4"}\n'


def parquet(rows: list[dict[str, object]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


TINY_SOURCES = ("    - {path: data/demo/math.jsonl, category: math, columns: {ground_truth: answer}}\n"
                "    - {path: data/demo/code.jsonl, category: code}\n"
                "    - {path: data/demo/chat.jsonl, category: other}\n")
PARQUET_SOURCE = ("    - {path: gt.parquet, format: parquet, category: math,"
                  " columns: {ground_truth: answer}}\n")
AM_ROW = '{"question": "q", "answer": "a", "verify_score": SCORE}\n'

# (name, files to write {name: content}, command (with {dir} and {db}), words the error must hold)
Case = tuple[str, dict[str, bytes | str], list[str], list[str]]
CASES: list[Case] = [
    ("grade-file: no input", {}, ["grade-file", "--input", "{dir}/none.jsonl", "--output", "{dir}/o"],
     ["none.jsonl", "no such file"]),
    ("grade-file: NaN", {"in.jsonl": GOOD + '{"id": 2, "category": "math", "response": "x", "s": NaN}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:2", "NaN"]),
    ("grade-file: deep nesting", {"in.jsonl": '{"id": 1, "x": ' + "[" * 100000 + "]" * 100000 + "}\n"},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "nested"]),
    ("grade-file: huge integer", {"in.jsonl": '{"id": ' + "9" * 5000 + "}\n"},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "integer"]),
    ("grade-file: lone surrogate", {"in.jsonl": '{"id": 1, "category": "math", "response": "\\ud800"}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "surrogate"]),
    ("grade-file: id true", {"in.jsonl": '{"id": true, "category": "math", "response": "x"}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "'id'"]),
    ("grade-file: category", {"in.jsonl": '{"id": 1, "category": "poetry", "response": "x"}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "poetry"]),
    ("grade-file: test_cases shape",
     {"in.jsonl": GOOD + '{"id": 2, "category": "code", "response": "x", "test_cases": {"nope": 1}}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:2", "test_cases"]),
    ("grade-file: constraints type",
     {"in.jsonl": '{"id": 1, "category": "if", "response": "x", "constraints": 7}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "constraints"]),
    ("grade-file: output is a folder", {"in.jsonl": GOOD},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}"], ["is a directory"]),
    ("grade-file: malformed JSON", {"in.jsonl": GOOD + "{nope\n"},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:2", "malformed JSON"]),
    ("grade-file: bad UTF-8", {"in.jsonl": b'{"id": 1, "response": "\xc3\x28"}\n'},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "UTF-8"]),
    ("grade-file: empty", {"in.jsonl": "\n\n"},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl", "empty"]),
    ("grade-file: not an object", {"in.jsonl": "[1, 2]\n"},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o"], ["in.jsonl:1", "object"]),
    ("grade-file: recipe missing", {"in.jsonl": GOOD},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o", "--recipe", "{dir}/no.yaml"],
     ["no.yaml"]),
    ("recipe: unknown key", {"r.yaml": tiny_yaml(**{"seed: 7": "seed: 7\nsede: 8"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "sede"]),
    ("recipe: infinite timeout", {"r.yaml": tiny_yaml(**{"code_timeout_s: 5": "code_timeout_s: .inf"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "code_timeout_s", "finite"]),
    ("recipe: negative CV_t", {"r.yaml": tiny_yaml(**{"{math: 0.05,": "{math: -0.05,"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "cv_threshold"]),
    ("recipe: duplicate key", {"r.yaml": tiny_yaml(**{"seed: 7": "seed: 7\nseed: 8"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "duplicate key 'seed'"]),
    ("recipe: alias", {"r.yaml": tiny_yaml(**{"seed: 7": "seed: &s 7\ndescription: *s"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "alias"]),
    ("recipe: absurd memory", {"r.yaml": tiny_yaml(**{"code_timeout_s: 5": "code_timeout_s: 5\n"
                                                      "  code_memory_mb: 99999999999"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "code_memory_mb"]),
    ("recipe: scorer unknown", {"r.yaml": tiny_yaml(**{"  seed: 7\n\ntraining":
                                                       "  seed: 7\n  quality: {perplexity_model: nobody}\n\n"
                                                       "training"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "nobody"]),
    ("recipe: YAML syntax", {"r.yaml": "name: x\n  bad: [\n"},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "line"]),
    ("recipe: missing file", {}, ["stats", "--recipe", "{dir}/gone.yaml", "--db", "{db}"], ["gone.yaml"]),
    ("recipe: unknown name", {}, ["stats", "--recipe", "tinyy", "--db", "{db}"], ["tinyy"]),
    ("recipe: before the command", {}, ["--recipe", "{dir}/gone.yaml", "ingest", "--db", "{db}"],
     ["gone.yaml"]),
    ("select: empty name", {}, ["select", "--name", "", "--db", "{db}"], ["selection name"]),
    ("select: newline in name", {}, ["select", "--name", "a\nb", "--db", "{db}"], ["selection name"]),
    ("export: unknown selection", {},
     ["export", "--selection", "nope", "--out", "{dir}/x.jsonl", "--db", "{db}"], ["nope"]),
    ("export: over a folder", {}, ["export", "--selection", "nope", "--format", "hf", "--out", "{dir}",
                                   "--db", "{db}"], ["exists and is"]),
    ("export: over a file", {"mine.jsonl": "precious\n"},
     ["export", "--selection", "nope", "--out", "{dir}/mine.jsonl", "--db", "{db}"],
     ["mine.jsonl", "exists and is"]),
    ("run: unknown stage", {}, ["run", "--stages", "ingest,bogus", "--db", "{db}"], ["bogus"]),
    ("import-am: file name", {"math_r1.jsonl": '{"question": "q", "answer": "a", "verify_score": 1}\n'},
     ["import-am", "{dir}/math_r1.jsonl", "--db", "{db}"], ["math_r1.jsonl", "CATEGORY_TEACHER_Kpass"]),
    ("import-am: score", {"math_r1_1pass.jsonl": '{"question": "q", "answer": "a", "verify_score": "x"}\n'},
     ["import-am", "{dir}/math_r1_1pass.jsonl", "--db", "{db}"], ["math_r1_1pass.jsonl:1", "verify_score"]),
    ("import-am: NaN ppl",
     {"math_r1_1pass.jsonl": '{"question": "q", "answer": "a", "verify_score": 1, "ppl": NaN}\n'},
     ["import-am", "{dir}/math_r1_1pass.jsonl", "--db", "{db}"], ["math_r1_1pass.jsonl:1", "NaN"]),
    ("import-am: infinite ppl",
     {"math_r1_1pass.jsonl": '{"question": "q", "answer": "a", "verify_score": 1, "ppl": 1e999}\n'},
     ["import-am", "{dir}/math_r1_1pass.jsonl", "--db", "{db}"], ["math_r1_1pass.jsonl:1", "ppl"]),
    ("import-am: missing file", {}, ["import-am", "{dir}/code_7b_2pass.jsonl", "--db", "{db}"],
     ["code_7b_2pass.jsonl"]),
    ("db: a folder", {}, ["stats", "--db", "{dir}"], ["is a directory"]),
    ("eval: unknown run", {}, ["eval", "--model", "20990101-000000-abcdef", "--db", "{db}"],
     ["20990101-000000-abcdef"]),
    ("train: unknown selection", {}, ["train", "--selection", "nope", "--db", "{db}"], ["nope"]),
    ("sample: unknown teacher", {}, ["sample", "--teacher", "nobody", "--db", "{db}"], ["nobody"]),
    ("grade: endpoint without a name", {}, ["grade", "--endpoint", "http://x", "--db", "{db}"],
     ["http://x", "NAME="]),
    # The red team's inputs (issue: grades that hold): each used to end in a traceback, exit 1.
    ("recipe: 5,000-digit integer", {"r.yaml": tiny_yaml(**{"seed: 7": "seed: " + "9" * 5000})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "line 10", "digits"]),
    ("recipe: nesting 3,000 deep", {"r.yaml": "name: x\ndescription: " + "[" * 3000 + "]" * 3000 + "\n"},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "nested deeper"]),
    ("recipe: a list as a key", {"r.yaml": "name: x\n? [1, 2]\n: y\n"},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "line 2", "a key must be"]),
    ("recipe: a map as a key", {"r.yaml": "name: x\n? {a: 1}\n: y\n"},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "a key must be"]),
    ("recipe: seed 2**70", {"r.yaml": tiny_yaml(**{"  seed: 7\n\ntraining": f"  seed: {2**70}\n\ntraining"})},
     ["stats", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["r.yaml", "selection.seed", "64 bits"]),
    ("import-am: pass number of 20 digits", {"math_r1_99999999999999999999pass.jsonl": AM_ROW.replace(
        "SCORE", "1")}, ["import-am", "{dir}/math_r1_99999999999999999999pass.jsonl", "--db", "{db}"],
     ["99999999999999999999pass.jsonl", "K in 1..1000"]),
    ("import-am: verify_score 7 for math", {"math_r1_1pass.jsonl": AM_ROW.replace("SCORE", "7")},
     ["import-am", "{dir}/math_r1_1pass.jsonl", "--db", "{db}"], ["math_r1_1pass.jsonl:1", "outside 0..1"]),
    ("import-am: verify_score -3 for science", {"science_r1_1pass.jsonl": AM_ROW.replace("SCORE", "-3")},
     ["import-am", "{dir}/science_r1_1pass.jsonl", "--db", "{db}"], ["science_r1_1pass.jsonl:1", "0..5"]),
    ("ingest: Parquet NaN ground truth",
     {"gt.parquet": parquet([{"question": "What is 1 + 1?", "answer": float("nan")}]),
      "r.yaml": tiny_yaml(**{TINY_SOURCES: PARQUET_SOURCE})},
     ["ingest", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["gt.parquet", "answer", "nan"]),
    ("ingest: Parquet inf ground truth",
     {"gt.parquet": parquet([{"question": "What is 1 + 1?", "answer": float("inf")}]),
      "r.yaml": tiny_yaml(**{TINY_SOURCES: PARQUET_SOURCE})},
     ["ingest", "--recipe", "{dir}/r.yaml", "--db", "{db}"], ["gt.parquet", "answer", "inf"]),
    ("grade-file: output under /proc", {"in.jsonl": GOOD},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "/proc/ddt-nope/o.jsonl"], ["/proc/ddt-nope"]),
    ("grade-file: output under a file", {"in.jsonl": GOOD},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/in.jsonl/o.jsonl"], ["in.jsonl"]),
    ("grade-file: --workers -1", {"in.jsonl": GOOD},
     ["grade-file", "--input", "{dir}/in.jsonl", "--output", "{dir}/o", "--workers", "-1"], ["--workers"]),
    ("grade: --workers 0", {}, ["grade", "--workers", "0", "--db", "{db}"], ["--workers"]),
    ("shard: under a file", {"f": "x"}, ["shard", "--shards", "2", "--out", "{dir}/f/sh", "--db", "{db}"],
     ["/f"]),
    ("shard: --shards 0", {}, ["shard", "--shards", "0", "--out", "{dir}/sh", "--db", "{db}"], ["--shards"]),
    ("cluster-export: under a file", {"f": "x"},
     ["cluster-export", "--recipe", "full-72b", "--out", "{dir}/f/bundle"], ["/f", "is a file"]),
    ("cluster-export: under /proc", {},
     ["cluster-export", "--recipe", "full-72b", "--out", "/proc/ddt-nope/bundle"], ["/proc/ddt-nope"]),
]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    with Store(d / "s.db") as s:
        ingest(s, load_recipe("tiny").data)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, store_dir: Path,
                                                          tmp_path: Path) -> None:
    _, files, command, words = case
    assert len(CASES) >= 40
    for name, content in files.items():
        write(tmp_path / name, content)
    db = store_dir / "s.db"
    before = fingerprint(db)
    listing = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(dir=tmp_path, db=db) for a in command]
    r = subprocess.run([sys.executable, "-m", "deepdistill_tui", *args], capture_output=True, text=True,
                       timeout=180, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (args, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("deepdistill-tui: error: "), r.stderr[-2000:]
    for word in words:
        assert word.format(dir=tmp_path) in lines[0], (word, lines[0])
    assert fingerprint(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no output, no temp file left


def test_the_fingerprint_sees_a_change(tmp_path: Path) -> None:
    """So that "writes nothing" above can fail: one new row changes the fingerprint."""
    assert len({c[0] for c in CASES}) == len(CASES)
    with Store(tmp_path / "f.db") as s:
        before = fingerprint(tmp_path / "f.db")
        with s.write() as conn:
            conn.execute("INSERT INTO queries VALUES ('q', 'x', 'math', 'train', NULL, NULL, NULL, NULL,"
                         " 'test', 0)")
    assert fingerprint(tmp_path / "f.db") != before


def _kill_during(args: list[str], cwd: Path, after_s: float) -> None:
    """kill -9 the command ``after_s`` seconds after its runs row says it is running: a fixed delay
    from the start missed every run once they all finished within it (grade took 1.2 s of its 4)."""
    db = Path(args[args.index("--db") + 1])
    proc = subprocess.Popen([sys.executable, "-m", "deepdistill_tui", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not _running(db, args[0]):
        time.sleep(0.01)
    try:
        proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _running(db: Path, command: str) -> bool:
    if not db.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT 1 FROM runs WHERE command = ? AND status = 'running'",
                                (command,)).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False  # not yet a store (the first import creates it)


@pytest.mark.slow
def test_kill_9_during_import_grade_and_export_then_a_fresh_start(tmp_path: Path) -> None:
    """Each command killed mid-way, then run again to the end: no `running` row left, no temp folder,
    and the counts of an uninterrupted run."""
    from tests.synthetic import write_am_files
    from tests.test_select import put

    db = tmp_path / "k.db"
    files = [str(f) for f in write_am_files(tmp_path / "am", 3000, categories=("math",), passes=2)]
    for delay in (0.05, 0.2):
        _kill_during(["import-am", *files, "--db", str(db)], tmp_path, delay)
    assert subprocess.run([sys.executable, "-m", "deepdistill_tui", "import-am", *files, "--db", str(db)],
                          capture_output=True, timeout=300).returncode == 0
    with Store(db) as s:
        assert s.count("samples") == 3000 * 3 * 2 and s.count("queries") == 3000
        put(s, {(f"g{i}", "gemma3-270m"): [None] * 4 for i in range(300)})
        with s.write() as conn:
            conn.execute("UPDATE queries SET ground_truth = '4' WHERE query_id LIKE 'g%'")
            conn.execute("UPDATE samples SET answer = '\\boxed{4}' WHERE query_id LIKE 'g%'")
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    grade = ["grade", "--db", str(db), "--recipe", "tiny", "--workers", "1"]
    _kill_during(grade, tmp_path, 0.3)
    assert subprocess.run([sys.executable, "-m", "deepdistill_tui", *grade], capture_output=True,
                          timeout=300).returncode == 0
    out = tmp_path / "export" / "am.hf"
    export = ["export", "--selection", "full", "--format", "hf", "--out", str(out), "--db", str(db),
              "--recipe", "full-72b"]
    assert subprocess.run([sys.executable, "-m", "deepdistill_tui", "select", "--name", "full", "--db",
                           str(db), "--recipe", "full-72b"], capture_output=True, timeout=300).returncode == 0
    _kill_during(export, tmp_path, 0.2)
    assert subprocess.run([sys.executable, "-m", "deepdistill_tui", *export], capture_output=True,
                          timeout=300).returncode == 0
    with Store(db) as s:
        assert s.count("grades") == 3000 * 3 * 2 + 1200
        assert s.scalar("SELECT count(*) FROM runs WHERE status = 'running'") == 0
        assert s.scalar("SELECT count(*) FROM runs WHERE status = 'interrupted'") >= 1
    assert [p.name for p in out.parent.iterdir() if "ddt-export-tmp" in p.name] == []
