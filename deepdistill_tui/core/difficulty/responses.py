"""The graded responses of one teacher as arrays, and each query's scores: what statistics, quality
filters and selection all read.

A response passes when its verify_score is above its category's threshold *from the recipe*, not the
``passed`` flag stored at grading time: moving a threshold must move every statistic with it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty import summaries
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store


def resolve_teachers(store: Store, names: list[str]) -> dict[str, str]:
    """Teacher name -> teacher_id. When a name has several ids (its settings changed), the newest id
    that has grades wins, else the newest id."""
    out: dict[str, str] = {}
    for name in names:
        row = store.conn.execute(
            "SELECT teacher_id FROM teachers t WHERE name = ?"
            " ORDER BY EXISTS (SELECT 1 FROM grades g WHERE g.teacher_id = t.teacher_id) DESC,"
            " created_at DESC, teacher_id LIMIT 1",
            (name,),
        ).fetchone()
        if row:
            out[name] = row[0]
    return out


@dataclass
class QueryScores:
    """Per-(query, teacher) aggregates of graded responses, as parallel numpy arrays."""

    query_ids: np.ndarray
    categories: np.ndarray
    n: np.ndarray
    n_pass: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @property
    def pass_rate(self) -> np.ndarray:
        return self.n_pass / np.maximum(self.n, 1)

    @property
    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.n, 1)

    @property
    def cv(self) -> np.ndarray:
        return self.cv_with(ddof=0)

    def cv_with(self, ddof: int) -> np.ndarray:
        """std / mean with ``ddof`` (0: population); NaN where the mean is 0 (all wrong: no CV)."""
        mean = self.mean
        var = self.total_sq / np.maximum(self.n, 1) - mean**2
        # E[x²] - E[x]² leaves float noise where all scores are equal: that is CV 0, not 1e-9.
        var[var < 1e-12 * np.maximum(mean**2, 1.0)] = 0.0
        if ddof:
            var = var * self.n / np.maximum(self.n - ddof, 1)
        cv = np.full(len(mean), np.nan)
        ok = (mean > 0) & (self.n > 0)
        cv[ok] = np.sqrt(var[ok]) / mean[ok]
        return cv


@dataclass
class Responses:
    """A teacher's graded responses to training queries, sorted by (query, pass), grouped by query.
    Query ids are kept once per query, not per response: at 4M responses a string per row was a
    quarter of selection's memory."""

    group_qids: np.ndarray  # per query
    categories: np.ndarray  # per response
    pass_index: np.ndarray
    score: np.ndarray
    starts: np.ndarray  # per query: first row
    counts: np.ndarray  # per query: number of rows

    @property
    def query_ids(self) -> np.ndarray:
        """Each response's query id (built on each call: prefer ``row_query_ids`` with a mask)."""
        return np.repeat(self.group_qids, self.counts)

    def row_query_ids(self, rows: np.ndarray) -> np.ndarray:
        """The query ids of the given rows (a boolean mask or row numbers), without a per-row copy of
        every id."""
        index = np.flatnonzero(rows) if rows.dtype == bool else rows
        return self.group_qids[np.searchsorted(self.starts, index, side="right") - 1]

    @property
    def group_categories(self) -> np.ndarray:
        return self.categories[self.starts]

    def group_sum(self, values: np.ndarray) -> np.ndarray:
        if len(self.starts) == 0:
            return np.zeros(0)
        return np.add.reduceat(values, self.starts)


def load_responses(store: Store, teacher_id: str) -> Responses:
    """One sequential read of the teacher's grades; categories come from a second, small read.

    Joining grades to queries row by row (or grading the threshold in SQL) costs three times as much
    over a million responses as reading the two tables apart and aligning them in numpy.
    """
    cur = store.conn.execute(
        "SELECT query_id, pass_index, verify_score FROM grades WHERE teacher_id = ?"
        " AND verify_score IS NOT NULL ORDER BY query_id, pass_index", (teacher_id,))
    # In chunks: a tuple per row for all of them at once was a third of selection's peak memory.
    qids: list[str] = []
    first = array("q")
    passes, scores = array("q"), array("d")
    last = None
    # The loop costs 5% of the fetch (0.05 of 0.95 s a million rows); zip(*chunk) and array.extend
    # cost more than it, measured. Rows come in query order: an id is kept when it changes.
    while chunk := cur.fetchmany(100_000):
        for qid, p, score in chunk:
            if qid != last:
                qids.append(qid)
                first.append(len(passes))
                last = qid
            passes.append(p)
            scores.append(score)
    train = dict(store.conn.execute("SELECT query_id, category FROM queries WHERE split = 'train'"))
    group_q = np.array(qids, dtype=object)
    del qids
    starts = np.frombuffer(first, dtype=np.int64) if len(first) else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, len(passes)]).astype(np.int64)
    group_cat = np.array([train.get(x) for x in group_q.tolist()], dtype=object)
    is_train = group_cat != None  # noqa: E711 - elementwise: eval queries are left out
    keep = np.repeat(is_train, counts)
    counts = counts[is_train]
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64) if len(counts) else counts
    return Responses(group_q[is_train], np.repeat(group_cat[is_train], counts),
                     np.frombuffer(passes, dtype=np.int64)[keep],
                     np.frombuffer(scores, dtype=np.float64)[keep], starts, counts)


def category_values(values: dict[str, float], categories: np.ndarray, default: float) -> np.ndarray:
    """Each element's category's value. Responses come sorted by query, so a category holds for a
    run of rows: one lookup per run (about one per query), then repeated."""
    table = {c: values.get(c, default) for c in CATEGORIES}
    if len(categories) == 0:
        return np.zeros(0)
    starts = np.flatnonzero(np.r_[True, categories[1:] != categories[:-1]])
    per_run = np.array([table.get(c, default) for c in categories[starts].tolist()], dtype=np.float64)
    return np.repeat(per_run, np.diff(np.r_[starts, len(categories)]))


def category_codes(categories: np.ndarray) -> np.ndarray:
    """Each element's index in ``CATEGORIES`` (-1 for none of them)."""
    index = {c: i for i, c in enumerate(CATEGORIES)}
    return np.array([index.get(c, -1) for c in categories.tolist()], dtype=np.int64)


def values_by_code(values: dict[str, float], codes: np.ndarray, default: float) -> np.ndarray:
    """``category_values`` for categories given as codes: one array lookup, no Python per element
    (seven calls over a million queries were 0.4 s of a selection)."""
    return np.array([*(values.get(c, default) for c in CATEGORIES), default], dtype=np.float64)[codes]


def thresholds_by_code(recipe: Recipe, codes: np.ndarray) -> np.ndarray:
    return values_by_code({c: recipe.grading.threshold(c) for c in CATEGORIES}, codes, 0.99)


def thresholds_of(recipe: Recipe, categories: np.ndarray) -> np.ndarray:
    return category_values({c: recipe.grading.threshold(c) for c in CATEGORIES}, categories, 0.99)


def scores_of(r: Responses, recipe: Recipe) -> QueryScores:
    passing = (r.score > np.repeat(thresholds_of(recipe, r.group_categories), r.counts)).astype(float)
    return QueryScores(r.group_qids, r.group_categories, r.counts.astype(np.float64),
                       r.group_sum(passing), r.group_sum(r.score), r.group_sum(r.score**2))


def query_scores(store: Store, recipe: Recipe, teacher_id: str) -> QueryScores:
    """Per-query aggregates of the teacher's graded responses to training queries, from the score
    summaries (one row per query, kept by triggers); from the grades when the summaries cannot be
    built (a read-only store) or a threshold has no slot."""
    cut_slots = summaries.ensure(store, summaries.recipe_cuts(recipe))
    passing = summaries.pass_column(recipe, cut_slots) if cut_slots is not None else None
    if passing is None:
        return _scores_from_grades(store, recipe, teacher_id)
    cols = _columns(store.conn.execute(
        f"SELECT query_id, category, n, {passing}, total, total_sq FROM score_summaries"
        " WHERE teacher_id = ? AND split = 'train' AND n > 0 ORDER BY query_id", (teacher_id,)).fetchall(), 6)
    return QueryScores(np.array(cols[0], dtype=object), np.array(cols[1], dtype=object),
                       *(np.array(c, dtype=np.float64) for c in cols[2:]))


def query_info(store: Store, recipe: Recipe, teachers: dict[str, str], query_ids: list[str],
               ) -> dict[str, dict[str, Any]] | None:
    """For these training queries: each teacher's pass rate and the training teacher's CV (None where
    undefined), as ``stats.per_query`` gives them, reading only their own summary rows. None when the
    summaries cannot serve (a read-only store, or thresholds without a slot)."""
    cut_slots = summaries.ensure(store, summaries.recipe_cuts(recipe))
    passing = summaries.pass_column(recipe, cut_slots) if cut_slots is not None else None
    if passing is None or not query_ids:
        return None if passing is None else {}
    out: dict[str, dict[str, Any]] = {}
    marks = ", ".join("?" * len(query_ids))
    for name, tid in teachers.items():
        cols = _columns(store.conn.execute(
            f"SELECT query_id, category, n, {passing}, total, total_sq FROM score_summaries"
            f" WHERE teacher_id = ? AND split = 'train' AND n > 0 AND query_id IN ({marks})"
            " ORDER BY query_id", (tid, *query_ids)).fetchall(), 6)
        s = QueryScores(np.array(cols[0], dtype=object), np.array(cols[1], dtype=object),
                        *(np.array(c, dtype=np.float64) for c in cols[2:]))
        for qid, rate in zip(s.query_ids.tolist(), s.pass_rate.tolist(), strict=True):
            out.setdefault(qid, {"pass_rates": {}, "cv": None})["pass_rates"][name] = rate
        if name == recipe.selection.training_teacher:
            for qid, c in zip(s.query_ids.tolist(), s.cv_with(recipe.selection.cv_ddof).tolist(),
                              strict=True):
                out[qid]["cv"] = None if np.isnan(c) else c
    return out


def _columns(rows: list[tuple[object, ...]], width: int) -> list[tuple[object, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _scores_from_grades(store: Store, recipe: Recipe, teacher_id: str) -> QueryScores:
    """Per-query aggregates computed by SQLite in one pass over the teacher's grades.

    Pass counts are taken against each distinct threshold (a handful) rather than a per-row CASE on
    the category, and the join to queries happens on the 4x smaller aggregate.
    """
    cuts = sorted({recipe.grading.threshold(c) for c in CATEGORIES})
    counts = ", ".join(f"sum(verify_score > {c!r})" for c in cuts)
    rows = store.conn.execute(
        f"SELECT g.*, q.category FROM (SELECT query_id, count(*), sum(verify_score),"
        f" sum(verify_score * verify_score), {counts} FROM grades"
        " WHERE teacher_id = ? AND verify_score IS NOT NULL GROUP BY query_id) g"
        " JOIN queries q ON q.query_id = g.query_id WHERE q.split = 'train' ORDER BY g.query_id",
        (teacher_id,),
    ).fetchall()
    if not rows:
        empty, z = np.array([], dtype=object), np.array([], dtype=np.float64)
        return QueryScores(empty, empty, z, z, z, z)
    cols = list(zip(*rows, strict=True))
    cats = np.array(cols[-1], dtype=object)
    above = np.array(cols[4:-1], dtype=np.float64)  # one row per distinct threshold
    which = np.searchsorted(cuts, thresholds_of(recipe, cats))
    return QueryScores(np.array(cols[0], dtype=object), cats, np.array(cols[1], dtype=np.float64),
                       above[which, np.arange(len(cats))], np.array(cols[2], dtype=np.float64),
                       np.array(cols[3], dtype=np.float64))


def single_response(store: Store, teacher_id: str) -> bool:
    """Does this teacher have one verified response per query (a release of single answers)? Its
    queries then have no pass rate and no CV: one verdict is not a rate."""
    row = store.conn.execute("SELECT params FROM teachers WHERE teacher_id = ?", (teacher_id,)).fetchone()
    return bool(row and '"single_response": true' in row[0])
