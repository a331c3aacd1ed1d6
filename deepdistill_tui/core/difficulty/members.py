"""A selection's members, stored one row per selected (query, teacher) with its passes as bits.

Per pass threshold, the score summaries keep a mask of the passes above it (difficulty/summaries.py),
so a selection decided from the summaries has its members without reading a grade: a kept query's
members are its mask at its category's cut, less the passes the quality filters flag. They are stored
as such, in ``selection_passes`` (bit i of ``passes`` is pass ``base + i``), and the view
``selection_members`` spells them out a row per response. At 1M responses that writes 131k rows for
Stage I where a row per member wrote 339k, and joins no grade; the join and the row per member were
about half of the selection's time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from deepdistill_tui.core.store.database import PASS_BITS

Member = tuple[str, str, int, int]
"""(query id, teacher id, pass index, stage)."""

_DIGITS = 19
"""A mask's width as zero-padded text: 2^62 - 1 has 19 digits."""


def bits_of(masks: np.ndarray) -> np.ndarray:
    """A (queries x PASS_BITS) boolean array: bit i of each mask."""
    as_bytes = np.ascontiguousarray(masks, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :PASS_BITS].view(bool)


def popcount(masks: np.ndarray) -> np.ndarray:
    """How many bits each mask has set (the classic SWAR sum; numpy < 2 has no bitwise_count)."""
    x = masks.astype(np.uint64)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


_CHUNK = 1 << 16
"""Masks spelled out as bits at a time: 62 bytes each, so 4 MB however many there are."""


def nth_pass(masks: np.ndarray, nth: np.ndarray) -> np.ndarray:
    """Each mask's ``nth`` set bit (0-based, in pass order) as a mask of its own."""
    at = np.empty(len(masks), dtype=np.int64)
    for start in range(0, len(masks), _CHUNK):
        part = slice(start, start + _CHUNK)
        bits = bits_of(masks[part])
        seen = np.cumsum(bits, axis=1, dtype=np.int8)  # at most 62
        at[part] = np.argmax(bits & (seen == (nth[part] + 1)[:, None]), axis=1)
    return np.left_shift(np.int64(1), at)


@dataclass(frozen=True)
class MemberBits:
    """Per selected query of one teacher (sorted by id): the mask of its member passes (0-61)."""

    teacher_id: str
    stage: int
    query_ids: np.ndarray
    masks: np.ndarray

    def count(self) -> int:
        return int(popcount(self.masks).sum())

    def rows(self) -> list[Member]:
        """The members, sorted by query, then pass."""
        at, passes = np.nonzero(bits_of(self.masks))  # row-major: query order, then pass order
        return [(q, self.teacher_id, p, self.stage)
                for q, p in zip(self.query_ids[at].tolist(), passes.tolist(), strict=True)]

    def insert(self, conn: sqlite3.Connection, selection: str) -> int:
        """Into ``selection_passes`` (inside the caller's write transaction); returns the members."""
        keep = self.masks != 0
        # One statement for them all: each row travels as one JSON string, the mask's fixed-width
        # digits then the id (0.25 s at 131k rows, against 0.4 s for a pair of values each).
        packed = json.dumps([f"{m:0{_DIGITS}d}{q}" for q, m in
                             zip(self.query_ids[keep].tolist(), self.masks[keep].tolist(), strict=True)])
        conn.execute(f"INSERT INTO selection_passes SELECT ?, substr(value, {_DIGITS + 1}), ?, 0,"
                     f" CAST(substr(value, 1, {_DIGITS}) AS INTEGER), ? FROM json_each(?)",
                     (selection, self.teacher_id, self.stage, packed))
        return self.count()


def insert_members(conn: sqlite3.Connection, selection: str, members: Iterable[Member]) -> None:
    """Members given a row each (a selection computed in memory) into ``selection_passes``."""
    rows: dict[tuple[str, str, int], list[int]] = {}
    for query_id, teacher_id, pass_index, stage in members:
        base = pass_index - pass_index % PASS_BITS
        row = rows.setdefault((query_id, teacher_id, base), [0, stage])
        row[0] |= 1 << (pass_index - base)
    conn.executemany("INSERT INTO selection_passes (selection, query_id, teacher_id, base, passes, stage)"
                     " VALUES (?, ?, ?, ?, ?, ?)",
                     ((selection, q, t, base, mask, stage) for (q, t, base), (mask, stage) in rows.items()))


def token_total(conn: sqlite3.Connection, selection: str, members_per_row: float) -> int:
    """The selection's tokens (``sample_tokens`` summed over its members)."""
    if members_per_row > 1.5:
        # Several members a row: one range of each query's tokens, its rows tested against the
        # mask, beats a lookup per member (0.71 s against 1.16 s for Stage I at 4M responses).
        sql = ("SELECT coalesce(sum(t.tokens), 0) FROM selection_passes m CROSS JOIN sample_tokens t"
               " ON t.query_id = m.query_id AND t.teacher_id = m.teacher_id WHERE m.selection = ?"
               f" AND t.pass_index - m.base BETWEEN 0 AND {PASS_BITS - 1}"
               " AND m.passes & (1 << (t.pass_index - m.base))")
    else:
        sql = ("SELECT coalesce(sum(t.tokens), 0) FROM selection_members m CROSS JOIN sample_tokens t"
               " ON t.query_id = m.query_id AND t.teacher_id = m.teacher_id AND t.pass_index = m.pass_index"
               " WHERE m.selection = ?")
    return int(conn.execute(sql, (selection,)).fetchone()[0])
