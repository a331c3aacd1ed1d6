"""The SQLite store: one file that any SQLite tool can open. Schema in docs/SCHEMA.md.

Every write goes through ``Store.write()``, a ``BEGIN IMMEDIATE`` transaction: a deferred BEGIN that reads
then writes fails at once with "database is locked" under concurrency, whatever the busy timeout.
Keys are NOT NULL composite primary keys and inserts use ``ON CONFLICT``, so every write is idempotent.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from deepdistill_tui.core.errors import DeepDistillError

DEFAULT_DB = "deepdistill.db"
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
]
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are explicit (``Store.write``)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Store:
    """The project database. Open one per process; never carry it across fork()."""

    def __init__(self, path: str | Path = DEFAULT_DB) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DeepDistillError(f"--db {self.path} is a directory, not a database file")
        try:
            self.conn = connect(self.path)
            self._migrate()
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
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
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
        return int(self.scalar(f"SELECT count(*) FROM {table}"))  # table names are ours, not input

    def table_counts(self) -> dict[str, int]:
        tables = ("queries", "teachers", "samples", "grades", "selections", "runs")
        return {t: self.count(t) for t in tables}

    # ------------------------------------------------------------ runs

    def start_run(self, command: str, recipe_name: str | None, recipe_json: str | None,
                  args: dict[str, Any]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, command, recipe_name, recipe, args, status, started_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (run_id, command, recipe_name, recipe_json, json.dumps(args, default=str),
                 time.time()),
            )
        return run_id

    def finish_run(self, run_id: str, status: str, result: Any = None,
                   error: str | None = None) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, finished_at = ?"
                " WHERE run_id = ?",
                (status, json.dumps(result, default=str) if result is not None else None, error,
                 time.time(), run_id),
            )

    @contextmanager
    def recorded_run(self, command: str, recipe_name: str | None = None, recipe_json: str | None = None,
                     args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A ``runs`` row around a block: ``ok`` with the block's ``result``, else failed/interrupted.

        The block puts its report in the yielded dict under ``result``.
        """
        run_id = self.start_run(command, recipe_name, recipe_json, args or {})
        handle: dict[str, Any] = {"run_id": run_id, "result": None}
        try:
            yield handle
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.finish_run(run_id, status, error=str(exc) or type(exc).__name__)
            raise
        self.finish_run(run_id, "ok", handle["result"])

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One runs row: command, status, the recipe it ran with and its result (both parsed)."""
        row = self.conn.execute("SELECT command, status, recipe, result FROM runs WHERE run_id = ?",
                                (run_id,)).fetchone()
        if row is None:
            return None
        return {"run_id": run_id, "command": row[0], "status": row[1],
                "recipe": json.loads(row[2]) if row[2] else None,
                "result": json.loads(row[3]) if row[3] else None}

    def last_run(self, command: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT run_id, status, result, started_at, finished_at FROM runs"
            " WHERE command = ? ORDER BY started_at DESC LIMIT 1",
            (command,),
        ).fetchone()
        if row is None:
            return None
        return {
            "run_id": row[0], "status": row[1],
            "result": json.loads(row[2]) if row[2] else None,
            "started_at": row[3], "finished_at": row[4],
        }
