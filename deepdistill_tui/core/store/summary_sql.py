"""The score summaries' SQL: the triggers that keep them, a full rebuild, and a recount of some keys,
each written with the pass thresholds in use (``summary_cuts``, a slot each).

Here in the store, beside the tables, because every writer of grades depends on it: a set-based
write (an import's move) suspends the insert trigger and calls ``recount`` for what it added, and
``difficulty/summaries.py`` decides which thresholds the slots hold.
"""

from __future__ import annotations

import math
import sqlite3

from deepdistill_tui.core.store.database import PASS_BITS

SLOTS = 8
_NONE = 1e308
"""The cut of an unused slot: no score passes it."""
_TRIGGERS = ("score_summaries_insert", "score_summaries_delete", "score_summaries_update")


def rebuild(conn: sqlite3.Connection, cuts: list[float]) -> None:
    """Every summary summed again from the grades, with ``cuts`` in the slots, and the triggers
    rewritten for them (in the caller's write transaction)."""
    padded = [*cuts, *[_NONE] * (SLOTS - len(cuts))]
    for name in _TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DELETE FROM summary_cuts")
    conn.executemany("INSERT INTO summary_cuts (slot, cut) VALUES (?, ?)", list(enumerate(cuts)))
    conn.execute("DELETE FROM score_summaries")
    conn.execute(_summed(padded, "grades g"))
    for statement in _trigger_sql(padded):
        conn.execute(statement)


def _summed(cuts: list[float], grades: str, upsert: bool = False) -> str:
    """SQL that writes the summary of every (query, teacher) in ``grades`` (a FROM clause whose rows
    are named ``g``), summed from their grades; ``upsert`` replaces the rows already there."""
    passes = ", ".join(f"sum(g.verify_score > {_literal(c)})" for c in cuts)
    # Each (query, teacher, pass) is one grade, so a sum of its bits is their OR.
    bits = ", ".join(f"sum({_bit('g', c)})" for c in cuts)
    columns = ["category", "split", "n", "total", "total_sq", *_COUNTS, *_MASKS, "wide"]
    replace = (" ON CONFLICT(teacher_id, query_id) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in columns)) if upsert else ""
    return (
        f"INSERT INTO score_summaries (teacher_id, query_id, category, split, n, total, total_sq, {_COLUMNS},"
        " wide) SELECT g.teacher_id, g.query_id, q.category, q.split, count(*),"
        f" sum(g.verify_score), sum(g.verify_score * g.verify_score), {passes}, {bits}, sum({_wide('g')})"
        f" FROM {grades} LEFT JOIN queries q ON q.query_id = g.query_id"
        f" WHERE g.verify_score IS NOT NULL GROUP BY g.query_id, g.teacher_id{replace}")


INSERT_TRIGGER = "score_summaries_insert"
"""What keeps the summaries as grades are added: a set-based writer that suspends it calls
``recount`` instead."""


def recount(conn: sqlite3.Connection, keys: str) -> None:
    """Sum again, from their grades, the summaries of the (query_id, teacher_id) pairs that the
    SELECT ``keys`` gives, in the write that added grades to them with the triggers suspended
    (``SuspendedTriggers``): what the triggers would have left, one statement for all."""
    cuts = [float(c) for (c,) in conn.execute("SELECT cut FROM summary_cuts ORDER BY slot")]
    padded = [*cuts, *[_NONE] * (SLOTS - len(cuts))]
    conn.execute(_summed(padded, f"({keys}) k JOIN grades g ON g.query_id = k.query_id"
                                 " AND g.teacher_id = k.teacher_id", upsert=True))


def _literal(cut: float) -> str:
    """A threshold as SQL text that reads back as the same double."""
    if not math.isfinite(cut):
        raise ValueError(f"threshold {cut} is not finite")
    return repr(float(cut))


def _bit(row: str, cut: float) -> str:
    """SQL for a grade's bit in the mask of passes above ``cut`` (0 for a pass the masks cannot hold)."""
    return (f"(CASE WHEN {row}.verify_score > {_literal(cut)} AND {row}.pass_index BETWEEN 0 AND"
            f" {PASS_BITS - 1} THEN 1 << {row}.pass_index ELSE 0 END)")


def _wide(row: str) -> str:
    return f"({row}.pass_index NOT BETWEEN 0 AND {PASS_BITS - 1})"


_COUNTS = [f"p{i}" for i in range(SLOTS)]
_MASKS = [f"m{i}" for i in range(SLOTS)]
_COLUMNS = ", ".join(_COUNTS + _MASKS)


def _trigger_sql(cuts: list[float]) -> list[str]:
    def above(row: str) -> str:
        counts = ", ".join(f"({row}.verify_score > {_literal(c)})" for c in cuts)
        return f"{counts}, {', '.join(_bit(row, c) for c in cuts)}, {_wide(row)}"

    summed = ", ".join(f"{c} = {c} + excluded.{c}" for c in [*_COUNTS, *_MASKS, "wide"])
    add = (
        "INSERT INTO score_summaries (teacher_id, query_id, category, split, n, total, total_sq, "
        f"{_COLUMNS}, wide) SELECT NEW.teacher_id, NEW.query_id, q.category, q.split, 1, NEW.verify_score,"
        f" NEW.verify_score * NEW.verify_score, {above('NEW')}"
        " FROM (SELECT 1) LEFT JOIN queries q ON q.query_id = NEW.query_id WHERE NEW.verify_score IS NOT NULL"
        " ON CONFLICT(teacher_id, query_id) DO UPDATE SET n = n + 1, total = total + excluded.total,"
        f" total_sq = total_sq + excluded.total_sq, {summed};"
    )
    minus = ", ".join([*(f"{c} = {c} - (OLD.verify_score > {_literal(cut)})" for c, cut in zip(_COUNTS, cuts,
                                                                                                 strict=True)),
                       *(f"{c} = {c} - {_bit('OLD', cut)}" for c, cut in zip(_MASKS, cuts, strict=True)),
                       f"wide = wide - {_wide('OLD')}"])
    remove = (
        "UPDATE score_summaries SET n = n - 1, total = total - OLD.verify_score,"
        f" total_sq = total_sq - OLD.verify_score * OLD.verify_score, {minus}"
        " WHERE teacher_id = OLD.teacher_id AND query_id = OLD.query_id AND OLD.verify_score IS NOT NULL;"
        " DELETE FROM score_summaries WHERE teacher_id = OLD.teacher_id AND query_id = OLD.query_id"
        " AND n <= 0;"
    )
    return [
        f"CREATE TRIGGER score_summaries_insert AFTER INSERT ON grades BEGIN {add} END",
        f"CREATE TRIGGER score_summaries_delete AFTER DELETE ON grades BEGIN {remove} END",
        "CREATE TRIGGER score_summaries_update AFTER UPDATE OF verify_score, query_id, teacher_id, pass_index"
        " ON grades"
        f" BEGIN {remove} {add} END",
    ]
