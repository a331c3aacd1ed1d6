"""The SQLite store: one file that any SQLite tool can open. Schema in docs/SCHEMA.md.

Every write goes through ``Store.write()``, a ``BEGIN IMMEDIATE`` transaction: a deferred BEGIN that reads
then writes fails at once with "database is locked" under concurrency, whatever the busy timeout.
Keys are NOT NULL composite primary keys and inserts use ``ON CONFLICT``, so every write is idempotent.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.store import cv_bins

DEFAULT_DB = "deepdistill.db"
PASS_BITS = 62
"""Passes a member row or a summary's bit mask holds, 0-61: SQLite integers are 64-bit and signed,
and 2^62 - 1 keeps every mask positive."""
BUSY_TIMEOUT_MS = 30_000

# Each entry migrates from version i to i + 1. Never edit a shipped entry: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE queries (
        query_id     TEXT NOT NULL PRIMARY KEY,
        question     TEXT NOT NULL,
        category     TEXT NOT NULL,
        split        TEXT NOT NULL DEFAULT 'train',
        ground_truth TEXT,
        test_cases   TEXT,
        constraints  TEXT,
        source       TEXT,
        origin       TEXT NOT NULL,
        created_at   REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX queries_category_split ON queries(category, split);

    CREATE TABLE teachers (
        teacher_id   TEXT NOT NULL PRIMARY KEY,
        name         TEXT NOT NULL,
        backend      TEXT NOT NULL,
        model        TEXT NOT NULL,
        model_sha256 TEXT,
        params       TEXT NOT NULL,
        created_at   REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX teachers_name ON teachers(name);

    CREATE TABLE samples (
        query_id          TEXT NOT NULL,
        teacher_id        TEXT NOT NULL,
        pass_index        INTEGER NOT NULL,
        response          TEXT NOT NULL,
        reasoning         TEXT,
        answer            TEXT,
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        finish_reason     TEXT,
        seconds           REAL,
        seed              INTEGER,
        created_at        REAL NOT NULL,
        PRIMARY KEY (query_id, teacher_id, pass_index)
    ) WITHOUT ROWID;
    CREATE INDEX samples_teacher ON samples(teacher_id);

    CREATE TABLE grades (
        query_id       TEXT NOT NULL,
        teacher_id     TEXT NOT NULL,
        pass_index     INTEGER NOT NULL,
        verify_score   REAL,
        passed         INTEGER NOT NULL,
        status         TEXT NOT NULL,
        grader         TEXT NOT NULL,
        grader_version TEXT NOT NULL,
        seconds        REAL,
        detail         TEXT,
        created_at     REAL NOT NULL,
        PRIMARY KEY (query_id, teacher_id, pass_index)
    ) WITHOUT ROWID;
    CREATE INDEX grades_teacher ON grades(teacher_id);

    CREATE TABLE selections (
        name       TEXT NOT NULL PRIMARY KEY,
        rule       TEXT NOT NULL,
        seed       INTEGER NOT NULL,
        counts     TEXT NOT NULL,
        n_members  INTEGER NOT NULL,
        n_tokens   INTEGER NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE selection_members (
        selection  TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        teacher_id TEXT NOT NULL,
        pass_index INTEGER NOT NULL,
        stage      INTEGER NOT NULL,
        PRIMARY KEY (selection, query_id, teacher_id, pass_index)
    ) WITHOUT ROWID;

    CREATE TABLE runs (
        run_id      TEXT NOT NULL PRIMARY KEY,
        command     TEXT NOT NULL,
        recipe_name TEXT,
        recipe      TEXT,
        args        TEXT NOT NULL,
        status      TEXT NOT NULL,
        result      TEXT,
        error       TEXT,
        started_at  REAL NOT NULL,
        finished_at REAL
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE evals (
        recipe_name TEXT NOT NULL,
        model       TEXT NOT NULL,
        split       TEXT NOT NULL,
        k           INTEGER NOT NULL,
        queries     INTEGER NOT NULL,
        pass_at_1   REAL NOT NULL,
        by_category TEXT NOT NULL,
        created_at  REAL NOT NULL,
        PRIMARY KEY (recipe_name, model, split)
    ) WITHOUT ROWID;
    """,
    # The app's grade inspector shows the latest grades; without this it scans every grade to find them.
    """
    CREATE INDEX grades_created ON grades(created_at);
    """,
    # R1 templates open the reasoning in the prompt (the prefill); the paper's perplexity filter needs
    # each response's perplexity; released data carries its own pass rates, kept for comparison.
    """
    ALTER TABLE samples ADD COLUMN prefill TEXT;
    ALTER TABLE samples ADD COLUMN ppl REAL;
    CREATE TABLE released_pass_rates (
        query_id  TEXT NOT NULL,
        teacher   TEXT NOT NULL,
        pass_rate REAL NOT NULL,
        PRIMARY KEY (query_id, teacher)
    ) WITHOUT ROWID;
    """,
    # Evaluation with its error bars: the interval over problems, each problem's pass rate (for paired
    # differences against the base), the model file's hash and the engine that generated the answers.
    """
    ALTER TABLE evals ADD COLUMN ci_low REAL;
    ALTER TABLE evals ADD COLUMN ci_high REAL;
    ALTER TABLE evals ADD COLUMN per_query TEXT;
    ALTER TABLE evals ADD COLUMN model_sha256 TEXT;
    ALTER TABLE evals ADD COLUMN engine TEXT;
    """,
    # Who runs a `running` row (host, pid and the process's start time), so that the next process to
    # open the store can tell a crashed run from a live one and mark it interrupted.
    """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    """,
    # `ablate`: one row per arm of a recipe's ablation; its selection, training run and evaluated
    # model, so that a rerun picks up where it stopped, and its finished table row.
    """
    CREATE TABLE ablations (
        recipe_name TEXT NOT NULL,
        arm         TEXT NOT NULL,
        selection   TEXT,
        train_run   TEXT,
        result      TEXT,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (recipe_name, arm)
    ) WITHOUT ROWID;
    """,
    # An evaluation is keyed by what it measured (its k and its number of problems), so that a quick
    # one with a smaller limit or k never overwrites the full one (207 problems once became 12).
    """
    CREATE TABLE evals_keyed (
        recipe_name TEXT NOT NULL,
        model       TEXT NOT NULL,
        split       TEXT NOT NULL,
        k           INTEGER NOT NULL,
        queries     INTEGER NOT NULL,
        pass_at_1   REAL NOT NULL,
        by_category TEXT NOT NULL,
        created_at  REAL NOT NULL,
        ci_low REAL, ci_high REAL, per_query TEXT, model_sha256 TEXT, engine TEXT,
        PRIMARY KEY (recipe_name, model, split, k, queries)
    ) WITHOUT ROWID;
    INSERT INTO evals_keyed SELECT recipe_name, model, split, k, queries, pass_at_1, by_category,
        created_at, ci_low, ci_high, per_query, model_sha256, engine FROM evals;
    DROP TABLE evals;
    ALTER TABLE evals_keyed RENAME TO evals;
    """,
    # `import`: how far each released-data source got, committed with its rows, so that a killed
    # import resumes after its last committed row and a finished source is not read again.
    """
    CREATE TABLE imports (
        source     TEXT NOT NULL PRIMARY KEY,
        format     TEXT NOT NULL,
        rows_done  INTEGER NOT NULL,
        finished   INTEGER NOT NULL,
        report     TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # Per (teacher, query): what statistics and selection read instead of every grade. Kept up to
    # date by triggers on grades (difficulty/summaries.py writes them with the pass thresholds in
    # use), so every write path, in its own transaction, keeps them exact.
    """
    CREATE TABLE score_summaries (
        teacher_id TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        category   TEXT,
        split      TEXT,
        n          INTEGER NOT NULL,
        total      REAL NOT NULL,
        total_sq   REAL NOT NULL,
        p0 INTEGER NOT NULL DEFAULT 0, p1 INTEGER NOT NULL DEFAULT 0, p2 INTEGER NOT NULL DEFAULT 0,
        p3 INTEGER NOT NULL DEFAULT 0, p4 INTEGER NOT NULL DEFAULT 0, p5 INTEGER NOT NULL DEFAULT 0,
        p6 INTEGER NOT NULL DEFAULT 0, p7 INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (teacher_id, query_id)
    ) WITHOUT ROWID;
    CREATE TABLE summary_cuts (
        slot INTEGER NOT NULL PRIMARY KEY,
        cut  REAL NOT NULL
    );
    """,
    # The paper's quality filters (perplexity, frequent n-grams) computed once per state of a
    # teacher's responses: a version that triggers on samples move with every change, and the
    # flagged responses that hold for it, so that a read finds them instead of reading all text.
    """
    CREATE TABLE teacher_versions (
        teacher_id TEXT NOT NULL PRIMARY KEY,
        version    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE quality_cache (
        teacher_id TEXT NOT NULL PRIMARY KEY,
        params     TEXT NOT NULL,
        version    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE quality_flags (
        teacher_id TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        pass_index INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        PRIMARY KEY (teacher_id, query_id, pass_index, kind)
    ) WITHOUT ROWID;
    INSERT INTO teacher_versions SELECT teacher_id, 1 FROM samples GROUP BY teacher_id;
    CREATE TRIGGER teacher_versions_insert AFTER INSERT ON samples BEGIN
        INSERT INTO teacher_versions VALUES (NEW.teacher_id, 1)
        ON CONFLICT(teacher_id) DO UPDATE SET version = version + 1;
    END;
    CREATE TRIGGER teacher_versions_delete AFTER DELETE ON samples BEGIN
        UPDATE teacher_versions SET version = version + 1 WHERE teacher_id = OLD.teacher_id;
    END;
    CREATE TRIGGER teacher_versions_update AFTER UPDATE OF response, ppl ON samples BEGIN
        UPDATE teacher_versions SET version = version + 1 WHERE teacher_id = NEW.teacher_id;
    END;
    """,
    # `import` stages each committed chunk here (appends), and moves the staged rows into the keyed
    # tables in key order in one transaction at its end: rows a kill leaves here are moved by the
    # next import.
    """
    CREATE TABLE staged_queries (query_id, question, category, ground_truth, test_cases, constraints,
                                 source, origin, created_at);
    CREATE TABLE staged_samples (query_id, teacher_id, pass_index, response, reasoning, answer, ppl,
                                 created_at);
    CREATE TABLE staged_grades (query_id, teacher_id, pass_index, verify_score, passed, grader_version,
                                detail, created_at);
    CREATE TABLE staged_rates (query_id, teacher, pass_rate);
    """,
    # Which face started a run (cli, app, api), so the app can list the runs of every face.
    """
    ALTER TABLE runs ADD COLUMN face TEXT;
    """,
    # The Data tab's order: a page is read off this index instead of sorting every query per page.
    """
    CREATE INDEX queries_browse ON queries(split, category, query_id);
    """,
    # Each teacher's number of samples, kept by the triggers that keep its version: statistics ask
    # whether every sample has a score, and counting 4M entries of the teacher index for that was a
    # fifth of their time.
    """
    ALTER TABLE teacher_versions ADD COLUMN n_samples INTEGER NOT NULL DEFAULT 0;
    UPDATE teacher_versions SET n_samples =
        (SELECT count(*) FROM samples s WHERE s.teacher_id = teacher_versions.teacher_id);
    DROP TRIGGER teacher_versions_insert;
    DROP TRIGGER teacher_versions_delete;
    CREATE TRIGGER teacher_versions_insert AFTER INSERT ON samples BEGIN
        INSERT INTO teacher_versions (teacher_id, version, n_samples) VALUES (NEW.teacher_id, 1, 1)
        ON CONFLICT(teacher_id) DO UPDATE SET version = version + 1, n_samples = n_samples + 1;
    END;
    CREATE TRIGGER teacher_versions_delete AFTER DELETE ON samples BEGIN
        UPDATE teacher_versions SET version = version + 1, n_samples = n_samples - 1
        WHERE teacher_id = OLD.teacher_id;
    END;
    CREATE TRIGGER teacher_versions_move AFTER UPDATE OF teacher_id ON samples
    WHEN OLD.teacher_id != NEW.teacher_id BEGIN
        UPDATE teacher_versions SET version = version + 1, n_samples = n_samples - 1
        WHERE teacher_id = OLD.teacher_id;
        INSERT INTO teacher_versions (teacher_id, version, n_samples) VALUES (NEW.teacher_id, 1, 1)
        ON CONFLICT(teacher_id) DO UPDATE SET version = version + 1, n_samples = n_samples + 1;
    END;
    """,
    # Each sample's length in tokens (the model's count, else a quarter of its characters), kept by
    # triggers in a narrow table: a selection's token total read it from the samples rows, whose
    # text comes before the count, so summing it read every member's text (4.4 of 6.5 s at 1M
    # responses of 2,000 characters).
    """
    CREATE TABLE sample_tokens (
        query_id   TEXT NOT NULL,
        teacher_id TEXT NOT NULL,
        pass_index INTEGER NOT NULL,
        tokens     INTEGER NOT NULL,
        PRIMARY KEY (query_id, teacher_id, pass_index)
    ) WITHOUT ROWID;
    INSERT INTO sample_tokens SELECT query_id, teacher_id, pass_index,
        coalesce(completion_tokens, length(response) / 4) FROM samples;
    CREATE TRIGGER sample_tokens_insert AFTER INSERT ON samples BEGIN
        INSERT INTO sample_tokens VALUES (NEW.query_id, NEW.teacher_id, NEW.pass_index,
            coalesce(NEW.completion_tokens, length(NEW.response) / 4))
        ON CONFLICT DO UPDATE SET tokens = excluded.tokens;
    END;
    CREATE TRIGGER sample_tokens_delete AFTER DELETE ON samples BEGIN
        DELETE FROM sample_tokens WHERE query_id = OLD.query_id AND teacher_id = OLD.teacher_id
        AND pass_index = OLD.pass_index;
    END;
    CREATE TRIGGER sample_tokens_update
    AFTER UPDATE OF query_id, teacher_id, pass_index, response, completion_tokens ON samples BEGIN
        DELETE FROM sample_tokens WHERE query_id = OLD.query_id AND teacher_id = OLD.teacher_id
        AND pass_index = OLD.pass_index;
        INSERT INTO sample_tokens VALUES (NEW.query_id, NEW.teacher_id, NEW.pass_index,
            coalesce(NEW.completion_tokens, length(NEW.response) / 4))
        ON CONFLICT DO UPDATE SET tokens = excluded.tokens;
    END;
    """,
    # Each summary's CV histogram bin, kept by SQLite as stored generated columns (store/cv_bins.py):
    # statistics read one small integer per query instead of two floats. The table is derived, so
    # it is made again empty and, with no thresholds recorded, rebuilt from the grades when next read.
    f"""
    DROP TRIGGER IF EXISTS score_summaries_insert;
    DROP TRIGGER IF EXISTS score_summaries_delete;
    DROP TRIGGER IF EXISTS score_summaries_update;
    DROP TABLE score_summaries;
    DELETE FROM summary_cuts;
    CREATE TABLE score_summaries (
        teacher_id TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        category   TEXT,
        split      TEXT,
        n          INTEGER NOT NULL,
        total      REAL NOT NULL,
        total_sq   REAL NOT NULL,
        p0 INTEGER NOT NULL DEFAULT 0, p1 INTEGER NOT NULL DEFAULT 0, p2 INTEGER NOT NULL DEFAULT 0,
        p3 INTEGER NOT NULL DEFAULT 0, p4 INTEGER NOT NULL DEFAULT 0, p5 INTEGER NOT NULL DEFAULT 0,
        p6 INTEGER NOT NULL DEFAULT 0, p7 INTEGER NOT NULL DEFAULT 0,
        {cv_bins.columns_sql()},
        PRIMARY KEY (teacher_id, query_id)
    ) WITHOUT ROWID;
    """,
    # The 20-gram filter's first pass kept per teacher (difficulty/quality.py, NgramSketch): an
    # import counts the texts it parses into it and adds to the kept one, instead of reading every
    # response back. `version` is the teacher's version it holds for, `texts` how many responses
    # it counts.
    """
    CREATE TABLE ngram_sketches (
        teacher_id TEXT NOT NULL PRIMARY KEY,
        ngram      INTEGER NOT NULL,
        texts      INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        cells      BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # Members kept compactly (difficulty/members.py): one row per selected (query, teacher) with
    # its member passes as bits, instead of one per response, and `selection_members` a view that
    # spells them out (and takes rows in and out as the table did). The summaries gain, per pass
    # threshold, the same bits for the passes above it, so that a selection finds its members
    # without reading the grades; the table is derived, so it is made again empty and rebuilt from
    # the grades when next read.
    f"""
    CREATE TABLE pass_bits (
        bit INTEGER NOT NULL PRIMARY KEY,
        i   INTEGER NOT NULL
    );
    INSERT INTO pass_bits (bit, i) WITH RECURSIVE b(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM b
        WHERE i < {PASS_BITS - 1}) SELECT 1 << i, i FROM b;
    CREATE TABLE selection_passes (
        selection  TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        teacher_id TEXT NOT NULL,
        base       INTEGER NOT NULL,
        passes     INTEGER NOT NULL,
        stage      INTEGER NOT NULL,
        PRIMARY KEY (selection, query_id, teacher_id, base)
    ) WITHOUT ROWID;
    INSERT INTO selection_passes SELECT selection, query_id, teacher_id,
        pass_index - pass_index % {PASS_BITS}, sum(1 << (pass_index % {PASS_BITS})), max(stage)
        FROM selection_members WHERE pass_index >= 0
        GROUP BY selection, query_id, teacher_id, pass_index / {PASS_BITS};
    DROP TABLE selection_members;
    CREATE VIEW selection_members AS SELECT m.selection, m.query_id, m.teacher_id,
        m.base + b.i AS pass_index, m.stage FROM selection_passes m
        JOIN pass_bits b ON b.bit <= m.passes AND m.passes & b.bit;
    CREATE TRIGGER selection_members_insert INSTEAD OF INSERT ON selection_members BEGIN
        SELECT RAISE(ABORT, 'selection_members: pass_index must be a whole number >= 0')
            WHERE typeof(NEW.pass_index) != 'integer' OR NEW.pass_index < 0;
        INSERT INTO selection_passes VALUES (NEW.selection, NEW.query_id, NEW.teacher_id,
            NEW.pass_index - NEW.pass_index % {PASS_BITS}, 1 << (NEW.pass_index % {PASS_BITS}), NEW.stage)
            ON CONFLICT DO UPDATE SET passes = passes | excluded.passes, stage = excluded.stage;
    END;
    CREATE TRIGGER selection_members_delete INSTEAD OF DELETE ON selection_members BEGIN
        UPDATE selection_passes SET passes = passes & ~(1 << (OLD.pass_index - base))
            WHERE selection = OLD.selection AND query_id = OLD.query_id AND teacher_id = OLD.teacher_id
            AND base = OLD.pass_index - OLD.pass_index % {PASS_BITS};
        DELETE FROM selection_passes WHERE selection = OLD.selection AND query_id = OLD.query_id
            AND teacher_id = OLD.teacher_id AND passes = 0;
    END;
    DROP TRIGGER IF EXISTS score_summaries_insert;
    DROP TRIGGER IF EXISTS score_summaries_delete;
    DROP TRIGGER IF EXISTS score_summaries_update;
    DROP TABLE score_summaries;
    DELETE FROM summary_cuts;
    CREATE TABLE score_summaries (
        teacher_id TEXT NOT NULL,
        query_id   TEXT NOT NULL,
        category   TEXT,
        split      TEXT,
        n          INTEGER NOT NULL,
        total      REAL NOT NULL,
        total_sq   REAL NOT NULL,
        p0 INTEGER NOT NULL DEFAULT 0, p1 INTEGER NOT NULL DEFAULT 0, p2 INTEGER NOT NULL DEFAULT 0,
        p3 INTEGER NOT NULL DEFAULT 0, p4 INTEGER NOT NULL DEFAULT 0, p5 INTEGER NOT NULL DEFAULT 0,
        p6 INTEGER NOT NULL DEFAULT 0, p7 INTEGER NOT NULL DEFAULT 0,
        m0 INTEGER NOT NULL DEFAULT 0, m1 INTEGER NOT NULL DEFAULT 0, m2 INTEGER NOT NULL DEFAULT 0,
        m3 INTEGER NOT NULL DEFAULT 0, m4 INTEGER NOT NULL DEFAULT 0, m5 INTEGER NOT NULL DEFAULT 0,
        m6 INTEGER NOT NULL DEFAULT 0, m7 INTEGER NOT NULL DEFAULT 0,
        wide INTEGER NOT NULL DEFAULT 0,
        {cv_bins.columns_sql()},
        PRIMARY KEY (teacher_id, query_id)
    ) WITHOUT ROWID;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def stage_lock(db_path: Path, stage: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """One process per database at a time for a stage that walks the store's remaining work (sample,
    grade): a second one says so through ``on_wait`` and waits for the first, then finds little left.
    The lock is an flock on DB.STAGE.lock, released by the kernel if its holder dies."""
    lock_path = _lock_path(db_path, stage)
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(f"another {stage} process is running on this database; waiting for it to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_path(db_path: Path, stage: str) -> Path:
    """DB.STAGE.lock beside the database's real file: a symlink or another spelling of the path must
    take the same lock (two graders once ran at once through a symlink)."""
    real = db_path.resolve()
    lock = real.with_name(f"{real.name}.{stage}.lock")
    if lock.is_dir():
        raise DeepDistillError(f"{lock}: is a directory; it must be free for the {stage} lock file")
    return lock


def lock_held(db_path: Path, stage: str) -> bool:
    """Is a process holding ``stage``'s lock on this database right now?"""
    lock_path = _lock_path(db_path, stage)
    if not lock_path.exists():
        return False
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the
    pid, it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_owner(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def owner_alive(owner: str | None) -> bool:
    try:
        _, pid, started = (owner or "").rsplit(":", 2)
        return _start_time(int(pid)) == started
    except ValueError:
        return True  # not ours to judge


QUICK_CHECK_MAX_BYTES = 512 << 20
_WAL_HEADER, _FRAME_HEADER = 32, 24
"""Bytes of the WAL file's header and of each frame's, before its page."""
_checked: set[tuple[str, int, int]] = set()


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged file before anything reads or writes it. Up to 512 MB, SQLite's
    ``quick_check`` (every page and index entry, ~0.5 s per 100 MB here); larger files get the cheap
    signal only: the header's page count against the file's size. Once per file state per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _checked:
        return
    if st.st_size <= QUICK_CHECK_MAX_BYTES:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"damaged: {problems[0]}")
    else:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        # A writer's new pages live in the WAL until a checkpoint copies them into the file (another
        # process importing, say), one frame each: only pages beyond both are missing.
        wal = Path(f"{path}-wal")
        frames = max(0, wal.stat().st_size - _WAL_HEADER) // (size + _FRAME_HEADER) if wal.exists() else 0
        if pages > st.st_size // size + frames:
            raise sqlite3.DatabaseError(f"damaged: the header counts {pages} pages, the file holds fewer")
    _checked.add(key)


def refuse_foreign(path: Path) -> None:
    """Refuse, untouched, a SQLite file that is not a store of ours: opening it normally would switch it
    to WAL and add our tables. Read through a read-only connection that changes nothing."""
    ro = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, isolation_level=None)
    try:
        version = int(ro.execute("PRAGMA user_version").fetchone()[0])
        tables = [name for (name,) in ro.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1")]
    finally:
        ro.close()
    if tables and (version == 0 or "queries" not in tables or "runs" not in tables):
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise DeepDistillError(f"{path}: a SQLite database of another program (tables: {shown});"
                               " not a deepdistill-tui store, left untouched")


def read_only(path: Path) -> bool:
    """On a read-only file system, or not writable by this user (root passes any mode bits)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY) or not os.access(path, os.W_OK)
    except OSError:
        return False


def refuse_read_only(path: Path) -> None:
    """Every command writes its ``runs`` row (and WAL mode writes beside the file): say why up front
    rather than with SQLite's "unable to open database file"."""
    for where in (path, path.parent):
        if read_only(where):
            raise DeepDistillError(f"{path}: the store is read-only ({where} cannot be written); copy it"
                                   " somewhere writable")


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration, one at a time (a trigger's body holds semicolons of its own;
    executescript would commit the transaction the migration runs in)."""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                yield buf
            buf = ""
    if buf.strip(" \n;"):
        yield buf


SORTER_THREADS = 2
"""Helper threads a connection's sorts may use (each holds up to one cache's worth of rows)."""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are explicit (``Store.write``)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    # 64 MB of page cache instead of SQLite's 2 MB: inserts into million-row B-trees stop reading the
    # same inner pages from disk again and again (a 4M-response import ran at a third of its speed).
    conn.execute("PRAGMA cache_size = -65536")
    # Debian's SQLite zeroes every page a delete frees (built with SECURE_DELETE): an import's move
    # wrote its whole staging area a second time to empty it (2.6 of 17.6 s at 1M responses). The
    # store holds public data and the user's own; freed pages are reused, not wiped.
    conn.execute("PRAGMA secure_delete = OFF")
    # The sorter may hand its runs to helper threads: the move's key-order sorts of millions of
    # staged rows use the second core (samples and grades 12.1 -> 10.0 s at 1M on 2 cores).
    conn.execute(f"PRAGMA threads = {SORTER_THREADS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # INSERT OR REPLACE deletes the row it replaces; only with this do delete triggers see that (the
    # score summaries' triggers must, or a merged grade would be counted twice).
    conn.execute("PRAGMA recursive_triggers = ON")
    return conn


class SuspendedTriggers:
    """Those of the named triggers that exist, dropped for a set-based write that does their work
    itself; ``restore()`` puts them back exactly as they were (their own SQL, from the schema).

    Only inside a write transaction: no other writer can run while they are gone, and a failure
    before the restore rolls the drop back with everything else."""

    def __init__(self, conn: sqlite3.Connection, names: tuple[str, ...]) -> None:
        if not conn.in_transaction:
            raise RuntimeError("triggers can only be suspended inside a write transaction")
        marks = ", ".join("?" * len(names))
        self._conn = conn
        self._saved: list[tuple[str, str]] = conn.execute(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
            names).fetchall()
        self.names = frozenset(name for name, _ in self._saved)
        for name, _ in self._saved:
            conn.execute(f'DROP TRIGGER "{name}"')

    def restore(self) -> None:
        for _, sql in self._saved:
            self._conn.execute(sql)


class Store:
    """The project database. Open one per process; never carry it across fork()."""

    def __init__(self, path: str | Path = DEFAULT_DB, *, create: bool = True) -> None:
        """``create=False`` (every command that only reads or works on data already there) refuses a
        missing file instead of leaving a new empty store behind a mistyped path."""
        self.path = Path(path)
        if self.path.is_dir():
            raise DeepDistillError(f"store {self.path} is a directory, not a database file")
        try:
            existed = self.path.exists() and self.path.stat().st_size > 0
            if not existed and not create:
                raise DeepDistillError(f"{self.path}: no store here (ingest, import-am or run creates one;"
                                       " --db names another)")
            if existed:
                refuse_read_only(self.path)  # first: even a read-only look at a WAL file needs its -shm
                refuse_foreign(self.path)
            self.conn = connect(self.path)
            if existed:
                check_integrity(self.conn, self.path)
            self._migrate()
            self.reap_stale_runs()
        except sqlite3.DatabaseError as exc:
            raise DeepDistillError(f"{self.path}: not a usable SQLite database ({exc})") from exc
        self.db = sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ schema

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise DeepDistillError(
                f"{self.path}: schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION}); upgrade deepdistill-tui"
            )
        if version == SCHEMA_VERSION:
            return
        with self.write() as conn:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------ transactions

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it lands or none of it does."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ------------------------------------------------------------ small queries

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def count(self, table: str) -> int:
        return int(self.db[table].count)

    def table_counts(self) -> dict[str, int]:
        tables = ("queries", "teachers", "samples", "grades", "selections", "runs")
        return {t: self.count(t) for t in tables}

    # ------------------------------------------------------------ runs

    def start_run(self, command: str, recipe_name: str | None, recipe_json: str | None,
                  args: dict[str, Any], face: str | None = None) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, command, recipe_name, recipe, args, status, started_at, owner,"
                " face) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, command, recipe_name, recipe_json, json.dumps(args, default=str),
                 time.time(), process_owner(), face),
            )
        return run_id

    def finish_run(self, run_id: str, status: str, result: Any = None,
                   error: str | None = None) -> None:
        """Record how a run ended."""
        with self.write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, finished_at = ? WHERE run_id = ?",
                (status, json.dumps(result, default=str) if result is not None else None, error,
                 time.time(), run_id),
            )

    def resume_run(self, run_id: str) -> None:
        """Take an unfinished run up again, in this process."""
        with self.write() as conn:
            conn.execute("UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, owner = ?"
                         " WHERE run_id = ?", (process_owner(), run_id))

    def update_run_args(self, run_id: str, **args: Any) -> None:
        """Add to a run's arguments what is only known once it started (a training run's folder)."""
        row = self.run(run_id)
        if row is None:
            raise DeepDistillError(f"no run {run_id!r} in {self.path}")
        with self.write() as conn:
            conn.execute("UPDATE runs SET args = ? WHERE run_id = ?",
                         (json.dumps({**row["args"], **args}, default=str), run_id))

    def reap_stale_runs(self) -> list[str]:
        """`running` rows whose process on this host is gone (kill -9, a power cut) become
        `interrupted`, saying who ran them; rows of other hosts are left to those hosts."""
        host = socket.gethostname()
        stale = [(run_id, owner) for run_id, owner in self.conn.execute(
                     "SELECT run_id, owner FROM runs WHERE status = 'running' AND owner LIKE ?",
                     (f"{host}:%",)) if not owner_alive(owner)]
        if not stale:
            return []
        now = time.time()
        with self.write() as conn:
            for run_id, owner in stale:
                conn.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ?"
                    " WHERE run_id = ? AND status = 'running' AND owner = ?",
                    (now, f"interrupted: process {owner} ended without finishing the run "
                          f"(found at {time.strftime('%Y-%m-%d %H:%M:%S')})", run_id, owner))
        return [run_id for run_id, _ in stale]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One runs row, its recipe, args and result parsed."""
        try:
            row = dict(self.db["runs"].get(run_id))  # type: ignore[union-attr]
        except sqlite_utils.db.NotFoundError:
            return None
        return _parsed_run(row)

    PAGE_SQL = ("SELECT query_id, split, category, question, ground_truth FROM queries"
                " ORDER BY split, category, query_id LIMIT ? OFFSET ?")
    """The Data tab's pages, read in the order of the queries_browse index."""

    def query_page(self, page: int, size: int) -> list[tuple[str, str, str, str, str | None]]:
        return self.conn.execute(self.PAGE_SQL, (size, page * size)).fetchall()

    def recent_runs(self, limit: int = 500) -> list[dict[str, Any]]:
        """Every command's runs, newest first, whichever face started them, without the resolved recipe
        (the app lists them on every refresh; ``run(run_id)`` has it)."""
        rows = self.db["runs"].rows_where(order_by="started_at DESC", limit=limit,
                                          select="run_id, command, recipe_name, args, status, result, error,"
                                                 " started_at, finished_at, face")
        return [_parsed_run(row) for row in rows]

    def runs(self, command: str, recipe_name: str | None = None, *,
             statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """A command's runs, newest first; only a recipe's, or only some statuses, when asked."""
        where, params = ["command = ?"], [command]
        if recipe_name is not None:
            where.append("recipe_name = ?")
            params.append(recipe_name)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        rows = self.db["runs"].rows_where(" AND ".join(where), params, order_by="started_at DESC")
        return [_parsed_run(row) for row in rows]

    def last_run(self, command: str) -> dict[str, Any] | None:
        found = self.runs(command)
        return found[0] if found else None

    def stage_done(self, stage: str, recipe_name: str, inputs: str) -> bool:
        """Did ``stage`` succeed for this recipe with these inputs (a hash of the recipe values)?"""
        return self.scalar(
            "SELECT 1 FROM runs WHERE command = ? AND recipe_name = ? AND status = 'ok'"
            " AND json_extract(args, '$.inputs') = ? LIMIT 1", (stage, recipe_name, inputs)) is not None


def _parsed_run(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("recipe", "result"):
        out[key] = json.loads(row[key]) if row.get(key) else None
    out["args"] = json.loads(row["args"]) if row.get("args") else {}
    return out
