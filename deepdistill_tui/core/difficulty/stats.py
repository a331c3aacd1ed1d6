"""Difficulty statistics (docs/PAPER.md section 4): pass rates per teacher, CV of the training teacher.

Aggregation happens in SQL (one pass over ``grades`` in key order, no per-row Python), histograms in
numpy, so the numbers recompute in about a second over a million responses. A response passes when its
verify_score is above its category's threshold *from the recipe*, not the ``passed`` flag stored at
grading time: moving a threshold must move every statistic with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty import summaries
from deepdistill_tui.core.difficulty.quality import exclusion_counts
from deepdistill_tui.core.difficulty.responses import (
    QueryScores,
    query_scores,
    resolve_teachers,
    single_response,
)
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store import cv_bins
from deepdistill_tui.core.store.cv_bins import CV_EDGES
from deepdistill_tui.core.store.database import Store

LENGTH_SAMPLE = 5000
"""Response lengths are measured on the first N responses by query id (sha256 ids: a random sample),
so that stats never reads every response's text."""


def pass_rate_histogram(scores: QueryScores, passes: int) -> list[dict[str, Any]]:
    """Counts of queries at each pass rate k/n. Bins at 0, 1/n, ..., 1 for the recipe's n are always
    present; queries graded over another number of responses add their own k/n bins."""
    rates = np.round(scores.pass_rate, 6)
    bins = {round(k / passes, 6): 0 for k in range(passes + 1)}
    values, counts = np.unique(rates, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        bins[v] = bins.get(v, 0) + int(c)
    return [{"pass_rate": k, "queries": v} for k, v in sorted(bins.items())]


def _length_summaries(store: Store, teacher_id: str) -> dict[str, dict[str, Any]]:
    """Percentiles of response length per category, over a sample of the teacher's responses."""
    rows = store.conn.execute(
        "SELECT q.category, coalesce(s.completion_tokens, -1), length(s.response) FROM samples s"
        " JOIN queries q ON q.query_id = s.query_id"
        " WHERE s.teacher_id = ? ORDER BY s.query_id LIMIT ?",
        (teacher_id, LENGTH_SAMPLE * len(CATEGORIES)),
    ).fetchall()
    by_cat: dict[str, list[tuple[int, int]]] = {}
    for cat, toks, chars in rows:
        by_cat.setdefault(cat, []).append((toks, chars))
    return {cat: _percentiles(vals[:LENGTH_SAMPLE]) for cat, vals in by_cat.items()}


def _percentiles(vals: list[tuple[int, int]]) -> dict[str, Any]:
    arr = np.array(vals)
    out: dict[str, Any] = {"sampled": len(vals),
                           "chars": {f"p{p}": int(np.percentile(arr[:, 1], p)) for p in (10, 50, 90, 99)}}
    if (arr[:, 0] >= 0).all():
        out["tokens"] = {f"p{p}": int(np.percentile(arr[:, 0], p)) for p in (10, 50, 90, 99)}
    return out


def missing_counts(store: Store, teacher_id: str, passes: int, sampled: dict[str, int] | None = None,
                   scored: int | None = None) -> dict[str, dict[str, int]]:
    """Per category: responses without a grade, and passes not yet sampled, over training queries.

    When every sample of the teacher has a score (the common case, and always for imported data) the
    score summaries hold each query's sample count: missing passes are the category's training
    queries times ``passes`` less each summarised query's min(n, passes), two aggregates over small
    indexes. Otherwise each table is counted per query through its teacher index. ``sampled`` is
    that sum of min(n, passes) per category, and ``scored`` the summaries' sum of n, when the caller
    has counted them already.
    """
    # The summaries count scored grades: as many as samples means every sample has a score.
    n_samples = store.scalar("SELECT n_samples FROM teacher_versions WHERE teacher_id = ?", (teacher_id,))
    n_scored = scored if scored is not None else store.scalar(
        "SELECT coalesce(sum(n), 0) FROM score_summaries WHERE teacher_id = ?", (teacher_id,))
    if n_samples == n_scored and store.scalar("SELECT count(*) FROM summary_cuts"):
        queries = dict(store.conn.execute(
            "SELECT category, count(*) FROM queries WHERE split = 'train' GROUP BY category"))
        if sampled is None:
            sampled = dict(store.conn.execute(
                "SELECT category, sum(min(n, ?)) FROM score_summaries WHERE teacher_id = ?"
                " AND split = 'train' GROUP BY category", (passes, teacher_id)))
        return {c: {"ungraded": 0, "missing_passes": int(k * passes - (sampled.get(c) or 0))}
                for c, k in queries.items()}
    return _missing_by_query(store, teacher_id, passes)


def _missing_by_query(store: Store, teacher_id: str, passes: int) -> dict[str, dict[str, int]]:
    n_samples, n_grades = store.conn.execute(
        "SELECT (SELECT count(*) FROM samples WHERE teacher_id = ?),"
        " (SELECT count(*) FROM grades WHERE teacher_id = ?)", (teacher_id, teacher_id)).fetchone()
    all_graded = n_grades == n_samples
    ungraded = "0" if all_graded else "sum(coalesce(s.n, 0) - coalesce(g.n, 0))"
    join_grades = "" if all_graded else (
        " LEFT JOIN (SELECT query_id, count(*) n FROM grades WHERE teacher_id = :t GROUP BY query_id) g"
        "  ON g.query_id = q.query_id")
    rows = store.conn.execute(
        f"SELECT q.category, {ungraded}, sum(max(0, :passes - coalesce(s.n, 0))) FROM queries q"
        " LEFT JOIN (SELECT query_id, count(*) n FROM samples WHERE teacher_id = :t GROUP BY query_id) s"
        f"  ON s.query_id = q.query_id{join_grades} WHERE q.split = 'train' GROUP BY q.category",
        {"t": teacher_id, "passes": passes},
    ).fetchall()
    return {c: {"ungraded": int(u or 0), "missing_passes": int(m or 0)} for c, u, m in rows}


def compute_stats(store: Store, recipe: Recipe, *, lengths: bool = True) -> dict[str, Any]:
    """The statistics of docs/STATS.md: per (category, teacher) histograms, per query rates and CV."""
    passes = recipe.sampling.passes
    names = list(dict.fromkeys([recipe.selection.training_teacher,
                                *recipe.selection.difficulty_teachers,
                                *(t.name for t in recipe.teachers)]))
    teachers = resolve_teachers(store, names)
    if recipe.selection.training_teacher not in teachers:
        raise DeepDistillError(
            f"no samples from the training teacher {recipe.selection.training_teacher!r} yet; "
            "sample (or import-am) first")
    per: dict[str, dict[str, Any]] = {}
    for name, tid in teachers.items():
        tally = _tally(store, recipe, tid)
        missing = missing_counts(store, tid, passes, tally.sampled(passes) if tally.from_summaries else None,
                                 tally.scored if tally.from_summaries else None)
        lengths_of = _length_summaries(store, tid) if lengths else {}
        summed = tally.entries()
        for cat in sorted(set(summed) | set(missing)):
            entry: dict[str, Any] = {"teacher_id": tid, **_entry(summed.get(cat), passes),
                                     **missing.get(cat, {"ungraded": 0, "missing_passes": 0})}
            if lengths:
                entry["length"] = lengths_of.get(cat, {"sampled": 0})
            per.setdefault(cat, {})[name] = entry
    single = sorted(n for n, tid in teachers.items() if single_response(store, tid))
    return {"recipe": recipe.name, "passes": passes, "single_response_teachers": single,
            "training_teacher": recipe.selection.training_teacher,
            "quality_filters": _quality_counts(store, recipe, teachers[recipe.selection.training_teacher]),
            "released_pass_rates": released_comparison(store, recipe, teachers),
            "thresholds": {c: recipe.grading.threshold(c) for c in CATEGORIES},
            "teachers": teachers, "categories": per}


_WIDTH = 1 << 24
"""Room for n and for passes in a tally key (the key then takes 55 bits)."""


@dataclass
class _Tally:
    """A teacher's training queries counted by (category, n, passing, CV code): everything the
    histograms need. ``keys`` pack the four as ``_key`` does; ``totals`` are per category."""

    keys: np.ndarray
    counts: np.ndarray
    totals: dict[int, float]
    scored: int
    """Scored responses in every split (the summaries' sum of n)."""
    from_summaries: bool

    def fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(category index, n, passing, CV code) of each key."""
        k = self.keys
        return (k // (16 * _WIDTH * _WIDTH) - 1, k // (16 * _WIDTH) % _WIDTH, k // 16 % _WIDTH, k % 16 - 1)

    def sampled(self, passes: int) -> dict[str, int]:
        """Per category, the sum over queries of min(n, passes)."""
        cat, n, _, _ = self.fields()
        return {CATEGORIES[c]: int((np.minimum(n[cat == c], passes) * self.counts[cat == c]).sum())
                for c in np.unique(cat).tolist() if c >= 0}

    def entries(self) -> dict[str, dict[str, Any]]:
        """Per category, the aggregates ``_entry`` turns into histograms."""
        cat, n, k, code = self.fields()
        out: dict[str, dict[str, Any]] = {}
        for c in np.unique(cat).tolist():
            if c < 0:
                continue  # not a category a query can have (validated on ingest)
            mine = cat == c
            count, cv = self.counts[mine], code[mine]
            rates: dict[tuple[int, int], int] = {}
            for key in zip(n[mine].tolist(), k[mine].tolist(), count.tolist(), strict=True):
                rates[key[:2]] = rates.get(key[:2], 0) + key[2]
            by_code = np.bincount(cv + 1, weights=count, minlength=len(CV_EDGES) + 2).astype(int)
            bins = by_code[2:].copy()
            bins[0] += by_code[1]  # a CV of 0 is in the first bin too
            out[CATEGORIES[c]] = {"queries": int(count.sum()), "responses": int((n[mine] * count).sum()),
                                  "total": self.totals.get(c, 0.0), "rates": rates,
                                  "cv_counts": bins.tolist(), "zero": int(by_code[1]),
                                  "undefined": int(by_code[0])}
        return out


def _key(cat: Any, n: Any, k: Any, code: Any) -> Any:
    """The tally key of (category index, n, passing, CV code), for numbers or SQL text alike."""
    return f"((({cat} + 1) * {_WIDTH} + {n}) * {_WIDTH} + {k}) * 16 + {code} + 1" if isinstance(cat, str) \
        else ((cat + 1) * _WIDTH + n) * _WIDTH * 16 + k * 16 + code + 1


def _check_width(most: int, tid: str) -> None:
    if most >= _WIDTH:
        raise DeepDistillError(f"teacher {tid!r} has {most:,} graded responses to one query; stats counts "
                               f"up to {_WIDTH - 1:,} a query")


def _tally(store: Store, recipe: Recipe, tid: str) -> _Tally:
    """The teacher's tally, counted from the summaries in one pass of SQLite (a key per query,
    joined into one string: at 1M queries, 0.2 s against 0.9 s for fetching each row's numbers into
    Python); from the grades when the summaries cannot serve."""
    cut_slots = summaries.ensure(store, summaries.recipe_cuts(recipe))
    passing = summaries.pass_column(recipe, cut_slots) if cut_slots is not None else None
    if passing is not None:
        key = _key(summaries.CATEGORY_CODE, "n", passing, f"cv_bin{recipe.selection.cv_ddof}")
        totals = ", ".join(f"sum(total) FILTER (WHERE split = 'train' AND category = '{c}')"
                           for c in CATEGORIES)
        row = store.conn.execute(
            f"SELECT group_concat(CASE WHEN split = 'train' AND n > 0 THEN {key} END), max(n),"
            f" coalesce(sum(n), 0), {totals} FROM score_summaries WHERE teacher_id = ?", (tid,)).fetchone()
        _check_width(row[1] or 0, tid)
        keys = np.fromstring(row[0], dtype=np.int64, sep=",") if row[0] else np.zeros(0, np.int64)
        uniq, counts = np.unique(keys, return_counts=True)
        totals_of = {i: float(t) for i, t in enumerate(row[3:]) if t is not None}
        return _Tally(uniq, counts, totals_of, int(row[2]), True)
    s = query_scores(store, recipe, tid)
    _check_width(int(s.n.max()) if len(s.n) else 0, tid)
    codes = np.array([CATEGORIES.index(c) if c in CATEGORIES else -1 for c in s.categories.tolist()],
                     dtype=np.int64)
    keys = _key(codes, s.n.astype(np.int64), s.n_pass.astype(np.int64),
                cv_bins.codes(s.n, s.total, s.total_sq, recipe.selection.cv_ddof))
    uniq, counts = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
    totals_of = {c: float(s.total[codes == c].sum()) for c in np.unique(codes).tolist() if c >= 0}
    return _Tally(uniq, counts, totals_of, int(s.n.sum()), False)


def _entry(agg: dict[str, Any] | None, passes: int) -> dict[str, Any]:
    """A (category, teacher) entry of docs/STATS.md from its aggregates."""
    agg = agg or {"queries": 0, "responses": 0, "total": 0.0, "rates": {},
                  "cv_counts": [0] * len(CV_EDGES), "zero": 0, "undefined": 0}
    bins = {round(k / passes, 6): 0 for k in range(passes + 1)}
    for (n, k), count in agg["rates"].items():
        rate = round(k / max(n, 1), 6)
        bins[rate] = bins.get(rate, 0) + count
    return {"queries": agg["queries"], "responses": agg["responses"],
            # Rounded: SQLite and numpy add the same scores in different orders.
            "mean_verify_score": round(agg["total"] / agg["responses"], 9) if agg["responses"] else None,
            "pass_rate_histogram": [{"pass_rate": r, "queries": c} for r, c in sorted(bins.items())],
            "cv_histogram": {"edges": [*CV_EDGES, None], "counts": list(agg["cv_counts"]),
                             "zero": agg["zero"], "undefined": agg["undefined"]}}


def _quality_counts(store: Store, recipe: Recipe, teacher_id: str) -> dict[str, int]:
    """How many of the training teacher's responses the paper's quality filters keep out of selection."""
    return exclusion_counts(store, recipe.selection.quality, teacher_id)


def released_comparison(store: Store, recipe: Recipe, teachers: dict[str, str]) -> dict[str, Any]:
    """For imported AM data: the release's own pass rates beside the ones computed from its grades
    (same queries), per teacher: the mean of each and the mean absolute difference."""
    out: dict[str, Any] = {}
    for name, tid in teachers.items():
        if not tid.startswith("am-"):
            continue
        fast = summaries.released_comparison(store, recipe, tid, tid[3:])
        if fast is not None:
            if fast[0]:
                out[name] = {"queries": fast[0], "computed_mean": fast[1], "released_mean": fast[2],
                             "mean_abs_diff": fast[3]}
            continue
        s = query_scores(store, recipe, tid)
        ours = dict(zip(s.query_ids.tolist(), s.pass_rate.tolist(), strict=True))
        theirs = dict(store.conn.execute(
            "SELECT query_id, pass_rate FROM released_pass_rates WHERE teacher = ?", (tid[3:],)))
        both = [q for q in ours if q in theirs]
        if both:
            a, b = np.array([ours[q] for q in both]), np.array([theirs[q] for q in both])
            out[name] = {"queries": len(both), "computed_mean": float(a.mean()),
                         "released_mean": float(b.mean()), "mean_abs_diff": float(np.abs(a - b).mean())}
    return out


def per_query(store: Store, recipe: Recipe) -> list[dict[str, Any]]:
    """Each training query: the pass rate of every teacher and the CV of the training teacher."""
    teachers = resolve_teachers(store, [t.name for t in recipe.teachers])
    rates: dict[str, dict[str, float]] = {}
    cv: dict[str, float | None] = {}
    cats: dict[str, str] = {}
    for name, tid in teachers.items():
        s = query_scores(store, recipe, tid)
        for qid, cat, rate in zip(s.query_ids.tolist(), s.categories.tolist(), s.pass_rate.tolist(),
                                  strict=True):
            rates.setdefault(qid, {})[name] = rate
            cats[qid] = cat
        if name == recipe.selection.training_teacher:
            for qid, c in zip(s.query_ids.tolist(), s.cv_with(recipe.selection.cv_ddof).tolist(),
                              strict=True):
                cv[qid] = None if np.isnan(c) else c
    return [{"query_id": q, "category": cats[q], "pass_rates": rates[q], "cv": cv.get(q)}
            for q in sorted(rates)]
