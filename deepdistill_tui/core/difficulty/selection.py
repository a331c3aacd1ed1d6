"""Selection (docs/PAPER.md section 5): Algorithm 1 (Stage I) and annealing (Stage II) into SQLite.

Stage I, per training query, over the training teacher's graded responses:
  1. no response passes its category's threshold            -> drop        ("no_pass")
  2. optional band on a weaker teacher's pass rate not met   -> drop        ("out_of_band")
  3. CV > CV_t of the category ("challenging")               -> keep every passing response
  4. otherwise ("easy"): keep the passing responses with the category's easy-keep probability
     (the paper: 0.5 for other, 0 elsewhere)                 -> "easy_kept" / "easy_dropped"
A response that the paper's quality filters remove (perplexity, frequent n-grams: difficulty/quality.py) is
never kept, though its score still counts toward its query's CV.
Stage II: among challenging queries, the highest-CV ones (up to max_instances), one random response
each whose score is above max(stage2 threshold, category threshold).

Every random draw comes from a hash of (seed, query id), not from a stream: a query's fate does not
depend on which other queries are in the store, and the same rule and seed give the same set.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty.quality import Exclusions, exclusions
from deepdistill_tui.core.difficulty.responses import (
    QueryScores,
    Responses,
    category_values,
    load_responses,
    query_scores,
    resolve_teachers,
    single_response,
    thresholds_of,
)
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store

BRANCHES = ("no_pass", "out_of_band", "challenging", "easy_kept", "easy_dropped")


@dataclass
class Selection:
    name: str
    rule: dict[str, Any]
    seed: int
    counts: dict[str, Any] = field(default_factory=dict)
    members: list[tuple[str, str, int, int]] = field(default_factory=list)
    n_tokens: int = 0


def uniform(seed: int, keys: np.ndarray, salt: str) -> np.ndarray:
    """One uniform [0, 1) number per key, a pure function of (seed, salt, key)."""
    out = np.empty(len(keys))
    for i, k in enumerate(keys.tolist()):
        h = hashlib.blake2b(f"{seed}:{salt}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") / 2**64
    return out


def _group_cv(r: Responses, ddof: int) -> np.ndarray:
    qs = QueryScores(r.group_qids, r.group_categories, r.counts.astype(np.float64),
                     np.zeros(len(r.counts)), r.group_sum(r.score), r.group_sum(r.score**2))
    return qs.cv_with(ddof)


def _band_mask(store: Store, recipe: Recipe, qids: np.ndarray) -> np.ndarray:
    band = recipe.selection.difficulty_band
    if band is None:
        return np.ones(len(qids), dtype=bool)
    tid = resolve_teachers(store, [band.teacher]).get(band.teacher)
    if tid is None:
        raise DeepDistillError(f"difficulty_band: teacher {band.teacher!r} has no samples")
    s = query_scores(store, recipe, tid)
    rates = dict(zip(s.query_ids.tolist(), s.pass_rate.tolist(), strict=True))
    # A query the weak teacher never answered has no rate: it cannot be in the band.
    rate = np.array([rates.get(q, np.nan) for q in qids.tolist()])
    return (rate >= band.min_pass_rate) & (rate <= band.max_pass_rate)


def stage_one(store: Store, recipe: Recipe, r: Responses, teacher_id: str, name: str,
              excluded: Exclusions) -> Selection:
    cfg = recipe.selection
    sel = Selection(name, rule=rule_of(recipe, stage=1), seed=cfg.seed)
    # CV is measured on every response; the quality filters only decide what may be kept.
    passing = (r.score > thresholds_of(recipe, r.categories)) & ~excluded.any
    any_pass = r.group_sum(passing.astype(np.int64)) > 0
    gq, gc = r.group_qids, r.group_categories
    in_band = _band_mask(store, recipe, gq)
    cv = _group_cv(r, cfg.cv_ddof)
    cv_t = category_values(cfg.cv_threshold, gc, 0.05)
    keep_p = category_values(cfg.easy_keep_probability, gc, 0.0)
    challenging = any_pass & in_band & (cv > cv_t)  # NaN CV compares False
    easy = any_pass & in_band & ~challenging
    # The seeded draw only where it can keep a query (a hash per query costs a microsecond).
    draw = np.ones(len(gq))
    may_keep = easy & (keep_p > 0)
    draw[may_keep] = uniform(cfg.seed, gq[may_keep], "easy")
    easy_kept = easy & (draw < keep_p)
    keep_query = challenging | easy_kept
    keep_row = np.repeat(keep_query, r.counts) & passing
    branch = {
        "no_pass": ~any_pass, "out_of_band": any_pass & ~in_band, "challenging": challenging,
        "easy_kept": easy_kept, "easy_dropped": easy & ~easy_kept,
    }
    sel.counts = {"queries": {b: int(m.sum()) for b, m in branch.items()},
                  "responses_kept": int(keep_row.sum()), "quality_filters": excluded.counts(),
                  "by_category": _count_by_category(r.categories[keep_row])}
    sel.members = [(q, teacher_id, int(p), 1) for q, p in
                   zip(r.row_query_ids(keep_row).tolist(), r.pass_index[keep_row].tolist(), strict=True)]
    return sel


def stage_two(recipe: Recipe, r: Responses, teacher_id: str, name: str, excluded: Exclusions) -> Selection:
    cfg = recipe.selection
    sel = Selection(name, rule=rule_of(recipe, stage=2), seed=cfg.seed)
    eligible = (r.score > np.maximum(thresholds_of(recipe, r.categories), cfg.stage2.threshold)) \
        & ~excluded.any
    n_eligible = r.group_sum(eligible.astype(np.int64))
    cv = _group_cv(r, cfg.cv_ddof)
    cv_t = category_values(cfg.cv_threshold, r.group_categories, 0.05)
    candidates = np.flatnonzero((cv > cv_t) & (n_eligible > 0))
    # Highest CV first; ties broken by a seeded hash so the cut at max_instances is reproducible.
    tie = uniform(cfg.seed, r.group_qids[candidates], "stage2-order")
    order = candidates[np.lexsort((tie, -cv[candidates]))][: cfg.stage2.max_instances]
    pick = uniform(cfg.seed, r.group_qids[order], "stage2-pick")
    # The u-th share of each chosen query's eligible responses, for all of them at once: the
    # eligible rows in order, and where each query's own begin among them.
    eligible_rows = np.flatnonzero(eligible)
    before = np.r_[0, np.cumsum(eligible)][r.starts[order]]
    rows = eligible_rows[before + (pick * n_eligible[order]).astype(np.int64)]
    sel.members = [(q, teacher_id, int(p), 2) for q, p in
                   zip(r.row_query_ids(rows).tolist(), r.pass_index[rows].tolist(), strict=True)]
    sel.counts = {"queries": {"candidates": len(candidates), "selected": len(order)},
                  "responses_kept": len(sel.members),
                  "by_category": _count_by_category(r.group_categories[order])}
    return sel


def _count_by_category(cats: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(cats.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def rule_of(recipe: Recipe, stage: int) -> dict[str, Any]:
    cfg = recipe.selection
    return {"stage": stage, "recipe": recipe.name, "training_teacher": cfg.training_teacher,
            "thresholds": {c: recipe.grading.threshold(c) for c in CATEGORIES},
            **cfg.model_dump(mode="json", exclude={"training_teacher", "seed"})}


def training_responses(store: Store, recipe: Recipe) -> tuple[str, Responses]:
    """(teacher id, graded responses) of the training teacher: what every selection rule reads."""
    teacher = recipe.selection.training_teacher
    tid = resolve_teachers(store, [teacher]).get(teacher)
    if tid is None:
        raise DeepDistillError(f"no samples from the training teacher {teacher!r}; sample first")
    if single_response(store, tid):
        raise DeepDistillError(f"training teacher {teacher!r} has one verified response per query "
                               "(released single answers): no pass rate or CV to select by; choose a "
                               "teacher with several passes per query as selection.training_teacher")
    r = load_responses(store, tid)
    if len(r.score) == 0:
        raise DeepDistillError(f"no graded responses from teacher {teacher!r} to training queries; "
                               "grade first")
    return tid, r


def compute_selection(store: Store, recipe: Recipe, name: str,
                      loaded: tuple[str, Responses] | None = None) -> list[Selection]:
    """Stage I as NAME (and Stage II as NAME-stage2 when enabled), in memory; nothing is stored.
    ``loaded`` reuses responses already read, so that a rule can be re-evaluated as it is edited."""
    tid, r = loaded or training_responses(store, recipe)
    excluded = _exclusions(store, recipe, tid, r)
    out = [stage_one(store, recipe, r, tid, name, excluded)]
    if recipe.selection.stage2.enabled:
        out.append(stage_two(recipe, r, tid, f"{name}-stage2", excluded))
    return out


_EXCLUSIONS: dict[int, tuple[Responses, Any, Exclusions]] = {}


def _exclusions(store: Store, recipe: Recipe, teacher_id: str, r: Responses) -> Exclusions:
    """The quality filters for these responses, kept while the app re-evaluates edited rules (the
    n-gram count reads every response's text)."""
    cfg = recipe.selection.quality
    hit = _EXCLUSIONS.get(id(r))
    if hit is not None and hit[0] is r and hit[1] == cfg:
        return hit[2]
    found = exclusions(store, cfg, teacher_id, r)
    _EXCLUSIONS.clear()
    _EXCLUSIONS[id(r)] = (r, cfg, found)
    return found


def run_selection(store: Store, recipe: Recipe, name: str) -> list[Selection]:
    """Compute the selection and store it (replacing one of the same name)."""
    check_name(name)
    out = compute_selection(store, recipe, name)
    save_selections(store, out)
    return out


@dataclass(frozen=True)
class SelectResult(Result):
    selections: list[Selection]
    """Stage I, then Stage II when the recipe enables it."""

    def summary(self) -> dict[str, Any]:
        return {"selections": [summary(s) for s in self.selections]}


def summary(sel: Selection) -> dict[str, Any]:
    """What every face reports of a computed selection (``list_selections`` has the same keys)."""
    return {"name": sel.name, "members": len(sel.members), "tokens": sel.n_tokens, "counts": sel.counts,
            "seed": sel.seed, "rule": sel.rule}


def with_rule(recipe: Recipe, thresholds: dict[str, float], cv_thresholds: dict[str, float]) -> Recipe:
    """The recipe with its per-category pass thresholds and CV_t replaced (validated as a recipe)."""
    data = recipe.model_dump(mode="json")
    data["grading"]["thresholds"] = {**data["grading"]["thresholds"], **thresholds}
    data["selection"]["cv_threshold"] = {**data["selection"]["cv_threshold"], **cv_thresholds}
    return Recipe.model_validate(data)


def check_name(name: str) -> None:
    """A selection name is a label people type and files are named after: 1-100 printable characters,
    no line breaks."""
    if not name or len(name) > 100 or not name.isprintable() or name != name.strip():
        raise DeepDistillError(f"selection name {name!r}: use 1-100 printable characters, no line breaks "
                               "or surrounding spaces")


def save_selections(store: Store, selections: list[Selection]) -> None:
    """Replace selections of the same names, all in one transaction."""
    for sel in selections:
        check_name(sel.name)
    now = time.time()
    with store.write() as conn:
        for sel in selections:
            conn.execute("DELETE FROM selection_members WHERE selection = ?", (sel.name,))
            conn.execute("DELETE FROM selections WHERE name = ?", (sel.name,))
            conn.executemany(
                "INSERT INTO selection_members (selection, query_id, teacher_id, pass_index, stage)"
                " VALUES (?, ?, ?, ?, ?)",
                ((sel.name, q, t, p, st) for q, t, p, st in sel.members),
            )
            sel.n_tokens = int(conn.execute(
                "SELECT coalesce(sum(coalesce(s.completion_tokens, length(s.response) / 4)), 0)"
                " FROM selection_members m JOIN samples s ON s.query_id = m.query_id"
                " AND s.teacher_id = m.teacher_id AND s.pass_index = m.pass_index"
                " WHERE m.selection = ?", (sel.name,)).fetchone()[0])
            conn.execute(
                "INSERT INTO selections (name, rule, seed, counts, n_members, n_tokens, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sel.name, json.dumps(sel.rule, sort_keys=True), sel.seed,
                 json.dumps(sel.counts, sort_keys=True), len(sel.members), sel.n_tokens, now),
            )


def list_selections(store: Store) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT name, seed, counts, n_members, n_tokens, created_at, rule FROM selections"
        " ORDER BY created_at DESC, name").fetchall()
    return [{"name": n, "seed": s, "counts": json.loads(c), "members": m, "tokens": t,
             "created_at": at, "rule": json.loads(rule)} for n, s, c, m, t, at, rule in rows]
