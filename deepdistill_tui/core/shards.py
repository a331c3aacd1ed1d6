"""Split the store into shards for a cluster's array jobs, and merge their results back.

A cluster samples and grades millions of queries as Slurm array tasks. SQLite is the wrong thing for
hundreds of writers on a shared filesystem, so each task gets its own database file holding its share
of the training queries (by a hash of the query id: stable however many times it is re-sharded).
A task is resumable on its own (`sample` and `grade` pick up the missing work of their file), and
`merge` folds finished shards into the main store, each in one transaction; merging twice is harmless.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.store import Store

# Parents before children: the foreign keys are checked row by row.
MERGED_TABLES = ("queries", "teachers", "samples", "grades")


def shard_of(query_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "little") % shards


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:04d}.db"


def write_shards(store: Store, shards: int, out_dir: Path) -> list[dict[str, Any]]:
    """shards files of the training queries (with any samples and grades they already have)."""
    if shards < 1:
        raise DeepDistillError("the number of shards must be at least 1")
    if store.scalar("SELECT count(*) FROM queries WHERE split = 'train'") == 0:
        raise DeepDistillError(f"{store.path} has no training queries to shard; ingest first")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for i in range(shards):
        with Store(shard_path(out_dir, i)) as shard:
            counts = _fill(shard, store.path.resolve(), i, shards)
        report.append({"shard": i, "path": str(shard_path(out_dir, i)), **counts})
    return report


def _fill(shard: Store, main: Path, index: int, shards: int) -> dict[str, int]:
    conn = shard.conn
    conn.create_function("dd_shard", 2, shard_of, deterministic=True)
    conn.execute("ATTACH DATABASE ? AS main_db", (str(main),))
    mine = "query_id IN (SELECT query_id FROM main_db.queries WHERE split = 'train'" \
           f" AND dd_shard(query_id, {shards}) = {index})"
    try:
        with shard.write():
            conn.execute(f"INSERT OR IGNORE INTO queries SELECT * FROM main_db.queries WHERE {mine}")
            conn.execute("INSERT OR IGNORE INTO teachers SELECT * FROM main_db.teachers")
            conn.execute(f"INSERT OR IGNORE INTO samples SELECT * FROM main_db.samples WHERE {mine}")
            conn.execute(f"INSERT OR IGNORE INTO grades SELECT * FROM main_db.grades WHERE {mine}")
    finally:
        conn.execute("DETACH DATABASE main_db")
    return {"queries": shard.count("queries"), "samples": shard.count("samples")}


def merge_shards(store: Store, paths: list[Path]) -> dict[str, int]:
    """Fold each shard's queries, teachers, samples and grades into the store (one transaction per
    shard). A grade in the shard replaces the store's (it is the newer); everything else is added."""
    added = dict.fromkeys(MERGED_TABLES, 0)
    for path in paths:
        if not path.is_file():
            raise DeepDistillError(f"shard {path} does not exist")
        with Store(path) as shard:  # checks it is a database of ours, migrating it if older
            version = shard.schema_version()
        if version != store.schema_version():
            raise DeepDistillError(f"{path}: schema version {version}, the store has "
                                   f"{store.schema_version()}")
        for table, n in _merge_one(store, path).items():
            added[table] += n
    return added


def _merge_one(store: Store, path: Path) -> dict[str, int]:
    conn = store.conn
    conn.execute("ATTACH DATABASE ? AS shard_db", (str(path),))
    added = {}
    try:
        with store.write():
            for table in MERGED_TABLES:
                verb = "INSERT OR REPLACE" if table == "grades" else "INSERT OR IGNORE"
                before = conn.total_changes
                conn.execute(f"{verb} INTO {table} SELECT * FROM shard_db.{table}")
                added[table] = conn.total_changes - before
    except sqlite3.DatabaseError as exc:
        raise DeepDistillError(f"{path}: cannot merge ({exc})") from exc
    finally:
        conn.execute("DETACH DATABASE shard_db")
    return added
