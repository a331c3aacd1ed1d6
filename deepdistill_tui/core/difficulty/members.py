"""A selection's members as a rule over the store's rows, turned into rows by SQLite itself.

Deciding which queries a selection keeps needs one summary row per query; which of a kept query's
responses are members then follows from a cut on the score (and, for Stage II, which one of those in
pass order). A ``MemberPlan`` holds exactly that, per kept query, and SQLite joins it to the grades:
at 4M responses, writing 1.7M members this way takes no per-row Python at all, where reading the rows
out and writing them back cost two thirds of the selection's time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from deepdistill_tui.core.store.database import Store

Member = tuple[str, str, int, int]
"""(query id, teacher id, pass index, stage)."""


@dataclass(frozen=True)
class MemberPlan:
    """Per kept query (in id order, so that SQLite walks its B-trees in key order): the cut its
    members' scores must pass, and for Stage II which of those responses (0-based, in pass order).
    Responses the quality filters flag are never members."""

    store: Store
    teacher_id: str
    stage: int
    query_ids: np.ndarray
    cuts: np.ndarray
    picks: np.ndarray | None
    filtered: bool
    """Whether the quality filters apply (their flags in ``quality_flags`` are fresh)."""

    def _rows_sql(self) -> str:
        unflagged = (" AND NOT EXISTS (SELECT 1 FROM quality_flags f WHERE f.teacher_id = g.teacher_id"
                     " AND f.query_id = g.query_id AND f.pass_index = g.pass_index)") if self.filtered else ""
        # The plan drives (CROSS JOIN), and each query's grades are found by the primary key (the
        # unary + keeps the teacher index out): the planner, left alone, scanned the teacher's index
        # and probed the plan, and then read each row through a second lookup, 4x slower at 1M.
        rows = ("SELECT g.query_id, g.teacher_id, g.pass_index, k.pick FROM temp.member_plan k"
                " CROSS JOIN grades g ON g.query_id = k.query_id AND +g.teacher_id = :teacher"
                f" WHERE g.verify_score > k.cut{unflagged}")
        if self.picks is None:
            return f"SELECT query_id, teacher_id, pass_index, {self.stage} FROM ({rows})"
        return (f"SELECT query_id, teacher_id, pass_index, {self.stage} FROM (SELECT *, row_number() OVER"
                f" (PARTITION BY query_id ORDER BY pass_index) - 1 AS i FROM ({rows})) WHERE i = pick")

    @contextmanager
    def _loaded(self, conn: sqlite3.Connection) -> Iterator[None]:
        """The plan as a temporary table for the statement run inside (temp tables can be written
        on a read-only store, and inside a write transaction of the main one)."""
        # Keyed by query: the ids arrive grouped by (cut, pick), and SQLite walks the grades and
        # writes the members in key order all the same (unkeyed, Stage I's insert took twice as long).
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS member_plan (query_id TEXT PRIMARY KEY, cut REAL,"
                     " pick INTEGER) WITHOUT ROWID")
        conn.execute("DELETE FROM temp.member_plan")
        # The ids of each (cut, pick) go in as one JSON array: a handful of statements (one per
        # category and pick) instead of a Python call per query, 0.3 s against 1.0 s at 1M.
        for cut in np.unique(self.cuts).tolist():
            at_cut = self.cuts == cut
            picks = [None] if self.picks is None else np.unique(self.picks[at_cut]).tolist()
            for pick in picks:
                mine = at_cut if pick is None else at_cut & (self.picks == pick)
                conn.execute("INSERT INTO temp.member_plan SELECT value, ?, ? FROM json_each(?)",
                             (cut, pick, json.dumps(self.query_ids[mine].tolist())))
        try:
            yield
        finally:
            conn.execute("DELETE FROM temp.member_plan")

    def rows(self) -> list[Member]:
        """The members, read out (sorted by query, then pass)."""
        conn = self.store.conn
        in_transaction = conn.in_transaction
        if not in_transaction:
            conn.execute("BEGIN")  # the temp table's rows and the read in one transaction
        try:
            with self._loaded(conn):
                return [(q, t, int(p), int(s)) for q, t, p, s in
                        conn.execute(self._rows_sql() + " ORDER BY 1, 3", {"teacher": self.teacher_id})]
        finally:
            if not in_transaction:
                conn.execute("COMMIT")

    def insert(self, conn: sqlite3.Connection, selection: str) -> int:
        """Write the members into ``selection_members`` (inside the caller's write transaction);
        returns how many."""
        with self._loaded(conn):
            cur = conn.execute("INSERT INTO selection_members (selection, query_id, teacher_id, pass_index,"
                               f" stage) SELECT :name, * FROM ({self._rows_sql()})",
                               {"teacher": self.teacher_id, "name": selection})
        return int(cur.rowcount)
