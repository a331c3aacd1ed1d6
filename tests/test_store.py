from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.store.database import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SORTER_THREADS,
    Store,
    SuspendedTriggers,
    _statements,
)


def test_schema_tables_wal_and_version(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.scalar("PRAGMA journal_mode") == "wal"
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"queries", "teachers", "samples", "grades", "selections", "selection_passes",
                "runs"} <= tables
        assert s.scalar("SELECT type FROM sqlite_master WHERE name = 'selection_members'") == "view"
    with Store(tmp_path / "a.db") as s:  # reopening migrates nothing twice
        assert s.schema_version() == SCHEMA_VERSION


def test_emptying_a_table_writes_its_freed_pages_no_second_time(tmp_path: Path) -> None:
    """An import's move empties its staging tables; with SQLite's secure delete (Debian builds it on)
    that wrote every freed page again, zeroed, as much as the rows themselves."""
    with Store(tmp_path / "a.db") as s:
        s.conn.execute("CREATE TABLE bulk (x TEXT)")
        with s.write() as conn:
            conn.executemany("INSERT INTO bulk VALUES (?)", [("x" * 1000,) for _ in range(2000)])
        pages = s.scalar("SELECT count(*) FROM dbstat WHERE name = 'bulk'")
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with s.write() as conn:
            conn.execute("DELETE FROM bulk")
        frames = (tmp_path / "a.db-wal").stat().st_size // (4096 + 24)
        assert pages > 400
        assert frames < 10, f"{frames} pages written to free {pages}"
        assert s.scalar("PRAGMA threads") == SORTER_THREADS  # big sorts may use a second core


def test_members_a_row_each_migrate_into_pass_masks_and_read_back_the_same(tmp_path: Path) -> None:
    """A store written before the masks (a row per member) keeps every member, passes past the
    first mask's 62 bits included."""
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    for script in MIGRATIONS[:-1]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    rows = [("s", "q1", "t", p, 1) for p in (0, 2, 3, 61, 62, 70)] + [("s", "q0", "t", 1, 1),
                                                                       ("s-stage2", "q1", "t", 2, 2)]
    conn.executemany("INSERT INTO selection_members VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()
    with Store(tmp_path / "old.db") as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.conn.execute("SELECT * FROM selection_members ORDER BY 1, 2, 4").fetchall() == sorted(rows)
        assert s.count("selection_passes") == 4  # q0; q1's passes 0-61, then 62-123; q1 in stage 2


def test_the_members_view_takes_rows_in_and_out_as_the_table_did(store: Store) -> None:
    rows = [("s", "q", "t", p, 1) for p in (5, 0, 70)]
    with store.write() as conn:
        conn.executemany("INSERT INTO selection_members VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("INSERT INTO selection_members VALUES ('s', 'q', 't', 5, 1)")  # already there
    assert store.conn.execute("SELECT * FROM selection_members").fetchall() == sorted(rows)
    with pytest.raises(sqlite3.IntegrityError, match="pass_index"), store.write() as conn:
        conn.execute("INSERT INTO selection_members VALUES ('s', 'q', 't', -1, 1)")
    with store.write() as conn:
        conn.execute("DELETE FROM selection_members WHERE pass_index IN (0, 70)")
    assert store.conn.execute("SELECT pass_index FROM selection_members").fetchall() == [(5,)]
    with store.write() as conn:
        conn.execute("DELETE FROM selection_members WHERE selection = 's'")
    assert store.count("selection_passes") == 0


def test_keys_are_not_null(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.write() as conn:
        conn.execute("INSERT INTO samples (query_id, teacher_id, pass_index, response, created_at)"
                     " VALUES ('q', NULL, 0, 'r', 0)")
    assert store.count("samples") == 0


def test_write_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute("INSERT INTO teachers VALUES ('t', 'n', 'b', 'm', NULL, '{}', 0)")
        raise RuntimeError("boom")
    assert store.count("teachers") == 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DeepDistillError, match="newer than this program"):
        Store(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DeepDistillError, match="junk.db: not a usable SQLite database"):
        Store(path)


def test_runs_record_the_resolved_recipe(store: Store) -> None:
    run_id = store.start_run("ingest", "tiny", '{"name": "tiny"}', {"x": 1})
    store.finish_run(run_id, "ok", {"kept": 3})
    last = store.last_run("ingest")
    assert last is not None and last["status"] == "ok" and last["result"] == {"kept": 3}
    assert store.scalar("SELECT recipe FROM runs") == '{"name": "tiny"}'


def test_a_run_whose_process_died_is_marked_interrupted(tmp_path: Path) -> None:
    """kill -9 leaves a `running` row; the next process to open the store marks it interrupted,
    saying which process ran it, and leaves a live process's run alone."""
    import subprocess
    import sys

    db = tmp_path / "r.db"
    script = ("import os\nfrom deepdistill_tui.core.store.database import Store\n"
              f"s = Store({str(db)!r})\nprint(s.start_run('grade', 'tiny', None, {{}}), flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    run_id = dead.stdout.strip()
    with Store(db) as s:
        live = s.start_run("sample", "tiny", None, {})
        status, error = s.conn.execute("SELECT status, error FROM runs WHERE run_id = ?",
                                       (run_id,)).fetchone()
        assert status == "interrupted" and "ended without finishing" in error
        assert s.reap_stale_runs() == []
        assert s.scalar("SELECT status FROM runs WHERE run_id = ?", (live,)) == "running"


def test_a_damaged_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A page overwritten with garbage: every command stops with one line and leaves the file as it
    was (before, `stats` printed a traceback while `ingest` and `grade` wrote into it)."""
    import subprocess
    import sys

    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.recipe import load_recipe

    db = tmp_path / "bad.db"
    with Store(db) as s:
        ingest(s, load_recipe("tiny").data)
        page = int(s.scalar("PRAGMA page_size"))
        assert int(s.scalar("PRAGMA page_count")) > 4
    with db.open("r+b") as fh:
        fh.seek(3 * page)
        fh.write(b"\xff" * page)
    before = db.read_bytes()
    for command in (["stats"], ["ingest"], ["grade"], ["select", "--name", "x"]):
        r = subprocess.run([sys.executable, "-m", "deepdistill_tui", *command, "--db", str(db)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (command, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "damaged" in lines[0] and str(db) in lines[0], (command, r.stderr)
        assert db.read_bytes() == before


def test_a_large_store_growing_in_another_writers_wal_opens_and_a_short_one_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the size that gets SQLite's quick check, the page count is checked against the file. The
    pages another process has just added are still in its WAL: an import's worker opening the store
    then was refused as damaged. A file cut short is still refused."""
    from deepdistill_tui.core.store import database

    monkeypatch.setattr(database, "QUICK_CHECK_MAX_BYTES", 0)  # every file gets the cheap check
    db = tmp_path / "big.db"
    with Store(db) as writer:
        writer.conn.execute("PRAGMA wal_autocheckpoint = 0")  # the new pages stay in the WAL
        writer.conn.execute("CREATE TABLE bulk (x TEXT)")
        with writer.write() as conn:
            conn.executemany("INSERT INTO bulk VALUES (?)", [("x" * 1000,) for _ in range(2000)])
        assert int(writer.scalar("PRAGMA page_count")) * 4096 > db.stat().st_size
        database._checked.clear()
        with Store(db) as other:  # was: "damaged: the header counts 560 pages, the file holds fewer"
            assert other.count("bulk") == 2000
    with db.open("r+b") as fh:  # closed and checkpointed, the file holds every page: cut the last 8
        fh.truncate(db.stat().st_size - 8 * 4096)
    database._checked.clear()
    with pytest.raises(DeepDistillError, match="not a usable SQLite database"):
        Store(db)


def _schema(store: Store) -> list[tuple[str, str]]:
    return store.conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_suspended_triggers_come_back_as_they_were_or_with_the_rollback(store: Store) -> None:
    before = _schema(store)
    names = ("sample_tokens_insert", "teacher_versions_insert", "no_such_trigger")
    with pytest.raises(RuntimeError, match="inside a write transaction"):
        SuspendedTriggers(store.conn, names)
    with store.write() as conn:
        suspended = SuspendedTriggers(conn, names)
        assert suspended.names == {"sample_tokens_insert", "teacher_versions_insert"}
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN (?, ?)",
                            names[:2]).fetchone()[0] == 0
        suspended.restore()
    assert _schema(store) == before
    with pytest.raises(ZeroDivisionError), store.write() as conn:  # a failed bulk write: no restore
        SuspendedTriggers(conn, names)
        _ = 1 / 0
    assert _schema(store) == before
