"""Difficulty statistics (PAPER.md section 4): pass rates per teacher, CV of the training teacher.

Aggregation happens in SQL (one pass over ``grades`` in key order, no per-row Python), histograms in
numpy, so the numbers recompute in about a second over a million responses. A response passes when its
verify_score is above its category's threshold *from the recipe*, not the ``passed`` flag stored at
grading time: moving a threshold must move every statistic with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store

CV_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
LENGTH_SAMPLE = 5000
"""Response lengths are measured on the first N responses by query id (sha256 ids: a random sample),
so that stats never reads every response's text."""


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
    """A teacher's graded responses to training queries, sorted by (query, pass), grouped by query."""

    query_ids: np.ndarray  # per response
    categories: np.ndarray
    pass_index: np.ndarray
    score: np.ndarray
    starts: np.ndarray  # per query: first row
    counts: np.ndarray  # per query: number of rows

    @property
    def group_qids(self) -> np.ndarray:
        return self.query_ids[self.starts]

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
    rows = store.conn.execute(
        "SELECT query_id, pass_index, verify_score FROM grades WHERE teacher_id = ?"
        " AND verify_score IS NOT NULL ORDER BY query_id, pass_index", (teacher_id,)).fetchall()
    train = dict(store.conn.execute("SELECT query_id, category FROM queries WHERE split = 'train'"))
    if rows:
        qids, passes, scores = zip(*rows, strict=True)
    else:
        qids, passes, scores = (), (), ()
    q = np.array(qids, dtype=object)
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, len(q)]).astype(np.int64)
    group_cat = np.array([train.get(x) for x in q[starts]], dtype=object)
    keep = np.repeat(group_cat != None, counts)  # noqa: E711 - elementwise: eval queries are left out
    q = q[keep]
    cats = np.repeat(group_cat, counts)[keep]
    counts = counts[group_cat != None]  # noqa: E711
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64) if len(counts) else counts
    return Responses(q, cats, np.array(passes, dtype=np.int64)[keep],
                     np.array(scores, dtype=np.float64)[keep], starts, counts)


def category_values(values: dict[str, float], categories: np.ndarray, default: float) -> np.ndarray:
    table = {c: values.get(c, default) for c in CATEGORIES}
    return np.array([table.get(c, default) for c in categories.tolist()], dtype=np.float64)


def thresholds_of(recipe: Recipe, categories: np.ndarray) -> np.ndarray:
    return category_values({c: recipe.grading.threshold(c) for c in CATEGORIES}, categories, 0.99)


def scores_of(r: Responses, recipe: Recipe) -> QueryScores:
    passing = (r.score > np.repeat(thresholds_of(recipe, r.group_categories), r.counts)).astype(float)
    return QueryScores(r.group_qids, r.group_categories, r.counts.astype(np.float64),
                       r.group_sum(passing), r.group_sum(r.score), r.group_sum(r.score**2))


def query_scores(store: Store, recipe: Recipe, teacher_id: str) -> QueryScores:
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


def pass_rate_histogram(scores: QueryScores, passes: int) -> list[dict[str, Any]]:
    """Counts of queries at each pass rate k/n. Bins at 0, 1/n, ..., 1 for the recipe's n are always
    present; queries graded over another number of responses add their own k/n bins."""
    rates = np.round(scores.pass_rate, 6)
    bins = {round(k / passes, 6): 0 for k in range(passes + 1)}
    values, counts = np.unique(rates, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        bins[v] = bins.get(v, 0) + int(c)
    return [{"pass_rate": k, "queries": v} for k, v in sorted(bins.items())]


def cv_histogram(cv: np.ndarray) -> dict[str, Any]:
    defined = cv[~np.isnan(cv)]
    edges = np.array([*CV_EDGES, np.inf])
    counts, _ = np.histogram(defined, bins=edges)
    return {
        "edges": [*CV_EDGES, None],
        "counts": counts.astype(int).tolist(),
        "zero": int(np.sum(defined == 0)),
        "undefined": int(np.sum(np.isnan(cv))),
    }


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


def missing_counts(store: Store, teacher_id: str, passes: int) -> dict[str, dict[str, int]]:
    """Per category: responses without a grade, and passes not yet sampled, over training queries.

    Each table is counted per query through its teacher index (which covers the key); when the teacher
    has as many grades as samples, nothing is ungraded and the grades count is skipped.
    """
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
        scores = query_scores(store, recipe, tid)
        missing = missing_counts(store, tid, passes)
        lengths_of = _length_summaries(store, tid) if lengths else {}
        for cat in sorted(set(scores.categories.tolist()) | set(missing)):
            mask = scores.categories == cat
            sub = QueryScores(scores.query_ids[mask], scores.categories[mask], scores.n[mask],
                              scores.n_pass[mask], scores.total[mask], scores.total_sq[mask])
            entry: dict[str, Any] = {
                "teacher_id": tid,
                "queries": int(mask.sum()),
                "responses": int(sub.n.sum()),
                "mean_verify_score": float(sub.total.sum() / sub.n.sum()) if sub.n.sum() else None,
                "pass_rate_histogram": pass_rate_histogram(sub, passes),
                "cv_histogram": cv_histogram(sub.cv_with(recipe.selection.cv_ddof)),
                **missing.get(cat, {"ungraded": 0, "missing_passes": 0}),
            }
            if lengths:
                entry["length"] = lengths_of.get(cat, {"sampled": 0})
            per.setdefault(cat, {})[name] = entry
    return {"recipe": recipe.name, "passes": passes,
            "training_teacher": recipe.selection.training_teacher,
            "quality_filters": _quality_counts(store, recipe, teachers[recipe.selection.training_teacher]),
            "released_pass_rates": released_comparison(store, recipe, teachers),
            "thresholds": {c: recipe.grading.threshold(c) for c in CATEGORIES},
            "teachers": teachers, "categories": per}


def _quality_counts(store: Store, recipe: Recipe, teacher_id: str) -> dict[str, int]:
    """How many of the training teacher's responses the paper's quality filters keep out of selection."""
    from deepdistill_tui.core.difficulty.quality import exclusions

    return exclusions(store, recipe.selection.quality, teacher_id,
                      load_responses(store, teacher_id)).counts()


def released_comparison(store: Store, recipe: Recipe, teachers: dict[str, str]) -> dict[str, Any]:
    """For imported AM data: the release's own pass rates beside the ones computed from its grades
    (same queries), per teacher: the mean of each and the mean absolute difference."""
    out: dict[str, Any] = {}
    for name, tid in teachers.items():
        if not tid.startswith("am-"):
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
