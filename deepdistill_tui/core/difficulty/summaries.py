"""Per-(teacher, query) summaries of the grades, kept exact by triggers: what statistics and selection
read instead of every response.

A summary row holds a query's number of graded responses from one teacher, the sum and the sum of
squares of their scores (the CV), how many of them pass each of up to ``SLOTS`` thresholds, and which
(``m0``..: bit i for pass i, passes 0-61; ``wide`` counts the graded responses outside them). The
thresholds are recipe values, so the triggers are written with the ones in use (``summary_cuts``); a
recipe with a threshold that has no slot rebuilds the table once, from the grades, and the new triggers
carry it from then on. Triggers fire inside the transaction of whatever writes a grade (an import, the
grade stage, a regrade, a shard merge, a test's own INSERT), so no write path can leave a summary
stale, and reading them costs one row per query however many responses and however long their text.
"""

from __future__ import annotations

import math
import sqlite3

from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import PASS_BITS, Store

SLOTS = 8
_NONE = 1e308
"""The cut of an unused slot: no score passes it."""
_TRIGGERS = ("score_summaries_insert", "score_summaries_delete", "score_summaries_update")


def recipe_cuts(recipe: Recipe) -> list[float]:
    return sorted({float(recipe.grading.threshold(c)) for c in CATEGORIES})


def slots(store: Store) -> dict[float, int]:
    """Threshold -> slot of the summaries as they are now (empty before they are first built)."""
    return {float(cut): int(slot) for slot, cut in store.conn.execute("SELECT slot, cut FROM summary_cuts")}


def ensure(store: Store, cuts: list[float]) -> dict[float, int] | None:
    """The slot of every threshold in ``cuts``, building (or rebuilding, with new thresholds) the
    summaries first when needed; None when the store cannot be written (then read the grades)."""
    have = slots(store)
    if have and all(c in have for c in cuts):
        return have
    wanted = sorted(set(have) | set(cuts)) if len(set(have) | set(cuts)) <= SLOTS else sorted(set(cuts))
    if len(wanted) > SLOTS:
        wanted = wanted[:SLOTS]  # more distinct thresholds than slots: the rest read the grades
    try:
        with store.write() as conn:
            _rebuild(conn, wanted)
    except sqlite3.OperationalError as exc:  # a read-only file or folder: the slow path still works
        if "readonly" in str(exc) or "read-only" in str(exc):
            return None
        raise
    return slots(store)


def _rebuild(conn: sqlite3.Connection, cuts: list[float]) -> None:
    padded = [*cuts, *[_NONE] * (SLOTS - len(cuts))]
    for name in _TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DELETE FROM summary_cuts")
    conn.executemany("INSERT INTO summary_cuts (slot, cut) VALUES (?, ?)", list(enumerate(cuts)))
    conn.execute("DELETE FROM score_summaries")
    passes = ", ".join(f"sum(g.verify_score > {_literal(c)})" for c in padded)
    # Each (query, teacher, pass) is one grade, so a sum of its bits is their OR.
    bits = ", ".join(f"sum({_bit('g', c)})" for c in padded)
    conn.execute(
        f"INSERT INTO score_summaries (teacher_id, query_id, category, split, n, total, total_sq, {_COLUMNS},"
        " wide) SELECT g.teacher_id, g.query_id, q.category, q.split, count(*),"
        f" sum(g.verify_score), sum(g.verify_score * g.verify_score), {passes}, {bits}, sum({_wide('g')})"
        " FROM grades g LEFT JOIN queries q ON q.query_id = g.query_id"
        " WHERE g.verify_score IS NOT NULL GROUP BY g.query_id, g.teacher_id")
    for statement in _trigger_sql(padded):
        conn.execute(statement)


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


CATEGORY_CODE = ("CASE category " + " ".join(f"WHEN '{c}' THEN {i}" for i, c in enumerate(CATEGORIES))
                 + " ELSE -1 END")
"""SQL for a summary row's category as its index in ``CATEGORIES`` (-1 for none of them): a number
reads faster than the text."""


def above_column(cut_slots: dict[float, int], cuts: dict[str, float], column: str = "p") -> str | None:
    """SQL for each summary row's count of responses above its category's cut (with ``column="m"``,
    the mask of their passes); None when a cut has no slot."""
    cases = []
    for cat in CATEGORIES:
        slot = cut_slots.get(float(cuts[cat]))
        if slot is None:
            return None
        cases.append(f"WHEN '{cat}' THEN {column}{slot}")
    return f"CASE category {' '.join(cases)} ELSE 0 END"


def pass_column(recipe: Recipe, cut_slots: dict[float, int]) -> str | None:
    """SQL for each summary row's count of passing responses at its category's threshold; None when a
    threshold has no slot."""
    return above_column(cut_slots, {c: recipe.grading.threshold(c) for c in CATEGORIES})


def released_comparison(store: Store, recipe: Recipe, teacher_id: str, released: str,
                        ) -> tuple[int, float, float, float] | None:
    """(queries, mean computed pass rate, mean released pass rate, mean absolute difference) over the
    training queries that have both, in one pass of SQLite; None when the summaries cannot serve."""
    cut_slots = ensure(store, recipe_cuts(recipe))
    passing = pass_column(recipe, cut_slots) if cut_slots is not None else None
    if passing is None:
        return None
    row = store.conn.execute(
        f"SELECT count(*), avg(ours), avg(theirs), avg(abs(ours - theirs)) FROM"
        f" (SELECT ({passing}) * 1.0 / n AS ours, r.pass_rate AS theirs FROM score_summaries s"
        "  JOIN released_pass_rates r ON r.query_id = s.query_id AND r.teacher = ?"
        "  WHERE s.teacher_id = ? AND s.split = 'train' AND s.n > 0)", (released, teacher_id)).fetchone()
    return (int(row[0]), float(row[1] or 0), float(row[2] or 0), float(row[3] or 0))
