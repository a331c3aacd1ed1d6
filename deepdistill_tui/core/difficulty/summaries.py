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
The SQL itself (the triggers, the rebuild, an import's recount) is ``store/summary_sql.py``; this module
chooses the thresholds and reads.
"""

from __future__ import annotations

import sqlite3

from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.store.summary_sql import SLOTS, rebuild

__all__ = ["SLOTS", "above_column", "ensure", "pass_column", "recipe_cuts", "released_comparison", "slots"]


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
            rebuild(conn, wanted)
    except sqlite3.OperationalError as exc:  # a read-only file or folder: the slow path still works
        if "readonly" in str(exc) or "read-only" in str(exc):
            return None
        raise
    return slots(store)


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
