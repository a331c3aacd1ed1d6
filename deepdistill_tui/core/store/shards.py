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
from deepdistill_tui.core.store.database import Store

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
    _refuse_other_shards(out_dir, shards)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for i in range(shards):
        with Store(shard_path(out_dir, i)) as shard:
            counts = _fill(shard, store.path.resolve(), i, shards)
        report.append({"shard": i, "path": str(shard_path(out_dir, i)), **counts})
    return report


def _refuse_other_shards(out_dir: Path, shards: int) -> None:
    """Shard files already in ``out_dir`` are reused only when they are this very split: files of
    another count hold other queries (re-sharding 3 ways over 5 put 147 of 215 queries in two shards)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DeepDistillError(f"{out_dir}: exists and is not a folder")
    found = sorted(out_dir.glob("shard-*.db")) if out_dir.is_dir() else []
    if found and {p.name for p in found} != {shard_path(out_dir, i).name for i in range(shards)}:
        raise DeepDistillError(f"{out_dir}: holds {len(found)} shard files of another split ({found[0].name}"
                               f" ...); shard into an empty folder")


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
    shard). A sample and its grade travel together: where the shard's response for a pass differs
    from the store's, the shard's sample replaces the store's and the store's grade goes with it
    (``replaced``), so no grade is ever paired with another response than the one it graded."""
    added = dict.fromkeys((*MERGED_TABLES, "replaced"), 0)
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


_KEY = "query_id, teacher_id, pass_index"
# The shard's passes whose response differs from the store's sample of the same pass.
_DIFFERENT = (f"SELECT {_KEY} FROM shard_db.samples s JOIN main.samples m USING ({_KEY})"
              " WHERE s.response IS NOT m.response OR s.prefill IS NOT m.prefill")


def _merge_one(store: Store, path: Path) -> dict[str, int]:
    conn = store.conn
    conn.execute("ATTACH DATABASE ? AS shard_db", (str(path),))
    added: dict[str, int] = {}
    try:
        with store.write():
            conn.execute(f"CREATE TEMP TABLE merge_replaced AS {_DIFFERENT}")
            added["replaced"] = int(conn.execute("SELECT count(*) FROM merge_replaced").fetchone()[0])
            where = f"({_KEY}) IN (SELECT {_KEY} FROM merge_replaced)"
            conn.execute(f"DELETE FROM main.grades WHERE {where}")
            conn.execute(f"DELETE FROM main.samples WHERE {where}")
            for table in ("queries", "teachers", "samples"):
                # rowcount counts what the statement wrote, not what the summaries' triggers did.
                inserted = conn.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM shard_db.{table}")
                added[table] = inserted.rowcount - (added["replaced"] if table == "samples" else 0)
            # Only the grades of the very responses the store now holds (the shard's grade is the newer).
            merged = conn.execute("INSERT OR REPLACE INTO main.grades SELECT g.* FROM shard_db.grades g"
                         f" JOIN shard_db.samples s USING ({_KEY}) JOIN main.samples m USING ({_KEY})"
                         " WHERE s.response IS m.response AND s.prefill IS m.prefill AND NOT EXISTS ("
                         " SELECT 1 FROM main.grades x WHERE x.query_id = g.query_id"
                         " AND x.teacher_id = g.teacher_id AND x.pass_index = g.pass_index"
                         " AND x.created_at IS g.created_at AND x.verify_score IS g.verify_score)")
            added["grades"] = merged.rowcount
            conn.execute("DROP TABLE temp.merge_replaced")
    except sqlite3.DatabaseError as exc:
        raise DeepDistillError(f"{path}: cannot merge ({exc})") from exc
    finally:
        conn.execute("DETACH DATABASE shard_db")
    return added
