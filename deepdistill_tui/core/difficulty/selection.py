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
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty import summaries
from deepdistill_tui.core.difficulty.members import (
    Member,
    MemberBits,
    insert_members,
    nth_pass,
    popcount,
    token_total,
)
from deepdistill_tui.core.difficulty.quality import Exclusions, exclusion_counts, exclusions, stored_flags
from deepdistill_tui.core.difficulty.responses import (
    QueryScores,
    Responses,
    category_codes,
    load_responses,
    query_scores,
    resolve_teachers,
    single_response,
    thresholds_by_code,
    thresholds_of,
    values_by_code,
)
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.recipe import CATEGORIES, Recipe
from deepdistill_tui.core.store.database import Store

BRANCHES = ("no_pass", "out_of_band", "challenging", "easy_kept", "easy_dropped")


class Selection:
    """A named set of (query, teacher, pass, stage) members, with the rule and counts behind it.

    Computed from the score summaries, a selection holds its members as ``MemberBits`` (per kept
    query, a mask of its passes): a row per member is made only when asked for, and
    ``save_selections`` stores the masks. Computed from responses in memory, it holds the list."""

    def __init__(self, name: str, rule: dict[str, Any], seed: int, counts: dict[str, Any] | None = None,
                 members: list[Member] | None = None, *, bits: MemberBits | None = None,
                 n_members: int | None = None) -> None:
        self.name, self.rule, self.seed = name, rule, seed
        self.counts: dict[str, Any] = counts if counts is not None else {}
        self.bits = bits
        self._members = [] if members is None and bits is None else members
        self._n_members = n_members
        self.n_tokens = 0

    @property
    def members(self) -> list[Member]:
        """Sorted by query and pass when made from the masks."""
        if self._members is None:
            assert self.bits is not None
            self._members = self.bits.rows()
        return self._members

    @members.setter
    def members(self, value: list[Member]) -> None:
        self._members, self.bits = value, None

    @property
    def n_members(self) -> int:
        if self._members is not None:
            return len(self._members)
        assert self._n_members is not None
        return self._n_members

    def write_members(self, conn: sqlite3.Connection) -> None:
        """Into ``selection_passes``, inside the caller's transaction: the masks as they are when
        the members were never spelled out, else from the list."""
        if self._members is None and self.bits is not None:
            self._n_members = self.bits.insert(conn, self.name)
            return
        insert_members(conn, self.name, self.members)


@dataclass
class QueryFacts:
    """Per training query of the training teacher, sorted by id: everything both stages decide on.
    ``n_pass`` and ``n_eligible`` count only responses the quality filters let through."""

    query_ids: np.ndarray
    categories: np.ndarray
    n: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    n_pass: np.ndarray
    """Responses above the category's pass threshold (Stage I's members)."""
    n_eligible: np.ndarray
    """Responses above max(threshold, Stage II's threshold) (Stage II's candidates)."""
    codes: np.ndarray
    """Each query's category as its index in ``CATEGORIES`` (-1 for none): what the rules look up."""
    masks: tuple[np.ndarray, np.ndarray] | None = None
    """The passes counted in (``n_pass``, ``n_eligible``) as bit masks, when read from the summaries."""

    def cv(self, ddof: int) -> np.ndarray:
        return QueryScores(self.query_ids, self.categories, self.n, np.zeros(len(self.n)), self.total,
                           self.total_sq).cv_with(ddof)


def uniform(seed: int, keys: np.ndarray, salt: str) -> np.ndarray:
    """One uniform [0, 1) number per key, a pure function of (seed, salt, key)."""
    blake2b, prefix = hashlib.blake2b, f"{seed}:{salt}:"
    hashed = [int.from_bytes(blake2b(f"{prefix}{k}".encode(), digest_size=8).digest(), "little")
              for k in keys.tolist()]
    return np.array(hashed, dtype=np.uint64).astype(np.float64) / 2**64


def stage_two_cuts(recipe: Recipe, categories: np.ndarray) -> np.ndarray:
    return np.maximum(thresholds_of(recipe, categories), recipe.selection.stage2.threshold)


def stage_two_cuts_by_code(recipe: Recipe, codes: np.ndarray) -> np.ndarray:
    return np.maximum(thresholds_by_code(recipe, codes), recipe.selection.stage2.threshold)


def facts_of_rows(recipe: Recipe, r: Responses, excluded: Exclusions) -> QueryFacts:
    passing = (r.score > thresholds_of(recipe, r.categories)) & ~excluded.any
    eligible = (r.score > stage_two_cuts(recipe, r.categories)) & ~excluded.any
    return QueryFacts(r.group_qids, r.group_categories, r.counts.astype(np.float64), r.group_sum(r.score),
                      r.group_sum(r.score**2), r.group_sum(passing.astype(np.int64)),
                      r.group_sum(eligible.astype(np.int64)), category_codes(r.group_categories))


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


def decide_stage_one(store: Store, recipe: Recipe, f: QueryFacts) -> dict[str, np.ndarray]:
    """Each query's branch of Algorithm 1, as one mask per name in ``BRANCHES``."""
    cfg = recipe.selection
    # CV is measured on every response; the quality filters only decide what may be kept.
    any_pass = f.n_pass > 0
    in_band = _band_mask(store, recipe, f.query_ids)
    cv = f.cv(cfg.cv_ddof)
    cv_t = values_by_code(cfg.cv_threshold, f.codes, 0.05)
    keep_p = values_by_code(cfg.easy_keep_probability, f.codes, 0.0)
    challenging = any_pass & in_band & (cv > cv_t)  # NaN CV compares False
    easy = any_pass & in_band & ~challenging
    # The seeded draw only where it can keep a query (a hash per query costs a microsecond).
    draw = np.ones(len(f.n))
    may_keep = easy & (keep_p > 0)
    draw[may_keep] = uniform(cfg.seed, f.query_ids[may_keep], "easy")
    easy_kept = easy & (draw < keep_p)
    return {"no_pass": ~any_pass, "out_of_band": any_pass & ~in_band, "challenging": challenging,
            "easy_kept": easy_kept, "easy_dropped": easy & ~easy_kept}


def decide_stage_two(recipe: Recipe, f: QueryFacts) -> tuple[int, np.ndarray, np.ndarray]:
    """(how many queries were candidates, the chosen ones in query order, which of each one's
    eligible responses in pass order)."""
    cfg = recipe.selection
    cv = f.cv(cfg.cv_ddof)
    cv_t = values_by_code(cfg.cv_threshold, f.codes, 0.05)
    candidates = np.flatnonzero((cv > cv_t) & (f.n_eligible > 0))
    chosen = _highest(cfg.seed, f.query_ids, candidates, cv[candidates], cfg.stage2.max_instances)
    pick = uniform(cfg.seed, f.query_ids[chosen], "stage2-pick")
    return len(candidates), chosen, (pick * f.n_eligible[chosen]).astype(np.int64)


def _highest(seed: int, query_ids: np.ndarray, candidates: np.ndarray, cv: np.ndarray, limit: int,
             ) -> np.ndarray:
    """The ``limit`` candidates of highest CV, sorted: ties at the cut are broken by a seeded hash
    so that the cut is reproducible. Only the queries tied at the cut are hashed (a hash costs a
    microsecond, and every candidate was 0.4 s at 4M responses)."""
    if len(candidates) <= limit:
        return candidates
    last = np.partition(cv, len(cv) - limit)[len(cv) - limit]  # the lowest CV that makes the cut
    above, tied = candidates[cv > last], candidates[cv == last]
    tie = uniform(seed, query_ids[tied], "stage2-order")
    return np.sort(np.concatenate([above, tied[np.argsort(tie, kind="stable")][: limit - len(above)]]))


def stage_one(store: Store, recipe: Recipe, r: Responses, teacher_id: str, name: str,
              excluded: Exclusions) -> Selection:
    """Stage I over responses held in memory."""
    f = facts_of_rows(recipe, r, excluded)
    branch = decide_stage_one(store, recipe, f)
    passing = (r.score > thresholds_of(recipe, r.categories)) & ~excluded.any
    keep_row = np.repeat(branch["challenging"] | branch["easy_kept"], r.counts) & passing
    members = [(q, teacher_id, int(p), 1) for q, p in
               zip(r.row_query_ids(keep_row).tolist(), r.pass_index[keep_row].tolist(), strict=True)]
    counts = {"queries": {b: int(m.sum()) for b, m in branch.items()}, "responses_kept": len(members),
              "quality_filters": excluded.counts(), "by_category": _count_by_category(r.categories[keep_row])}
    return Selection(name, rule_of(recipe, stage=1), recipe.selection.seed, counts, members)


def stage_two(recipe: Recipe, r: Responses, teacher_id: str, name: str, excluded: Exclusions) -> Selection:
    """Stage II over responses held in memory."""
    f = facts_of_rows(recipe, r, excluded)
    n_candidates, order, pick = decide_stage_two(recipe, f)
    # The pick-th of each chosen query's eligible responses, for all of them at once: the eligible
    # rows in order, and where each query's own begin among them.
    eligible = (r.score > stage_two_cuts(recipe, r.categories)) & ~excluded.any
    before = np.r_[0, np.cumsum(eligible)][r.starts[order]]
    rows = np.flatnonzero(eligible)[before + pick]
    members = [(q, teacher_id, int(p), 2) for q, p in
               zip(r.row_query_ids(rows).tolist(), r.pass_index[rows].tolist(), strict=True)]
    counts = {"queries": {"candidates": n_candidates, "selected": len(order)}, "responses_kept": len(members),
              "by_category": _count_by_category(r.group_categories[order])}
    return Selection(name, rule_of(recipe, stage=2), recipe.selection.seed, counts, members)


def planned_selections(store: Store, recipe: Recipe, teacher_id: str, name: str, f: QueryFacts,
                       ) -> list[Selection]:
    """Both stages decided from per-query facts, their members the summaries' pass masks."""
    assert f.masks is not None
    mask_one, mask_two = f.masks
    cfg = recipe.selection
    branch = decide_stage_one(store, recipe, f)
    kept = np.flatnonzero(branch["challenging"] | branch["easy_kept"])
    n_kept = int(f.n_pass[kept].sum())
    bits = MemberBits(teacher_id, 1, f.query_ids[kept], mask_one[kept])
    counts = {"queries": {b: int(m.sum()) for b, m in branch.items()}, "responses_kept": n_kept,
              "quality_filters": exclusion_counts(store, cfg.quality, teacher_id),
              "by_category": _count_by_code(f.codes[kept], f.n_pass[kept])}
    out = [Selection(name, rule_of(recipe, stage=1), cfg.seed, counts, bits=bits, n_members=n_kept)]
    if cfg.stage2.enabled:
        n_candidates, chosen, pick = decide_stage_two(recipe, f)
        bits = MemberBits(teacher_id, 2, f.query_ids[chosen], nth_pass(mask_two[chosen], pick))
        counts = {"queries": {"candidates": n_candidates, "selected": len(chosen)},
                  "responses_kept": len(chosen), "by_category": _count_by_code(f.codes[chosen])}
        out.append(Selection(f"{name}-stage2", rule_of(recipe, stage=2), cfg.seed, counts, bits=bits,
                             n_members=len(chosen)))
    return out


def _count_by_category(cats: np.ndarray, weights: np.ndarray | None = None) -> dict[str, int]:
    """Each category's count (of rows, or of ``weights`` summed), categories with none left out."""
    values, inverse = np.unique(cats.astype(str), return_inverse=True)
    counts = np.bincount(inverse, weights=weights, minlength=len(values))
    return {str(v): int(c) for v, c in zip(values, counts, strict=True) if c}


def _count_by_code(codes: np.ndarray, weights: np.ndarray | None = None) -> dict[str, int]:
    """``_count_by_category`` for categories given as codes (-1, none of them, counts as "None")."""
    counts = np.bincount(codes + 1, weights=weights, minlength=len(CATEGORIES) + 1)
    named = {"None" if i == 0 else CATEGORIES[i - 1]: int(c) for i, c in enumerate(counts.tolist()) if c}
    return dict(sorted(named.items()))


def rule_of(recipe: Recipe, stage: int) -> dict[str, Any]:
    cfg = recipe.selection
    return {"stage": stage, "recipe": recipe.name, "training_teacher": cfg.training_teacher,
            "thresholds": {c: recipe.grading.threshold(c) for c in CATEGORIES},
            **cfg.model_dump(mode="json", exclude={"training_teacher", "seed"})}


def training_teacher(store: Store, recipe: Recipe) -> str:
    """The training teacher's id, refused with one line when it cannot be selected from."""
    teacher = recipe.selection.training_teacher
    tid = resolve_teachers(store, [teacher]).get(teacher)
    if tid is None:
        raise DeepDistillError(f"no samples from the training teacher {teacher!r}; sample first")
    if single_response(store, tid):
        raise DeepDistillError(f"training teacher {teacher!r} has one verified response per query "
                               "(released single answers): no pass rate or CV to select by; choose a "
                               "teacher with several passes per query as selection.training_teacher")
    return tid


def _no_grades(recipe: Recipe) -> DeepDistillError:
    return DeepDistillError(f"no graded responses from teacher {recipe.selection.training_teacher!r} to "
                            "training queries; grade first")


def training_responses(store: Store, recipe: Recipe) -> tuple[str, Responses]:
    """(teacher id, graded responses) of the training teacher: what a rule edited in memory reads."""
    tid = training_teacher(store, recipe)
    r = load_responses(store, tid)
    if len(r.score) == 0:
        raise _no_grades(recipe)
    return tid, r


def summary_facts(store: Store, recipe: Recipe, teacher_id: str) -> QueryFacts | None:
    """Per-query facts from the score summaries and the stored quality flags, reading one row per
    query and one per flagged response, never every response; None when the summaries cannot serve
    (a read-only store, a threshold without a slot, a pass index the masks cannot hold)."""
    cats = np.array(CATEGORIES, dtype=object)
    cut_one = dict(zip(CATEGORIES, thresholds_of(recipe, cats).tolist(), strict=True))
    cut_two = dict(zip(CATEGORIES, stage_two_cuts(recipe, cats).tolist(), strict=True))
    slots = summaries.ensure(store, sorted({*cut_one.values(), *cut_two.values()}))
    mask_one = summaries.above_column(slots, cut_one, "m") if slots is not None else None
    mask_two = summaries.above_column(slots, cut_two, "m") if slots is not None else None
    if mask_one is None or mask_two is None:
        return None
    cfg = recipe.selection.quality
    filtered = cfg.max_perplexity is not None or cfg.max_ngram_count is not None
    if filtered:
        stored_flags(store, cfg, teacher_id)  # refreshed first when stale
    where = "FROM score_summaries WHERE teacher_id = ? AND split = 'train' AND n > 0 ORDER BY query_id"
    conn = store.conn
    outer = conn.in_transaction
    if not outer:
        conn.execute("BEGIN")  # ids, numbers and flags from one snapshot
    try:
        if conn.execute("SELECT 1 FROM score_summaries WHERE teacher_id = ? AND split = 'train' AND wide > 0"
                        " LIMIT 1", (teacher_id,)).fetchone():
            return None  # a pass beyond the masks' bits: the members are found from the responses
        numbers = _summary_numbers(conn, where, teacher_id, mask_one, mask_two)
        ids = _query_ids(conn, where, teacher_id, len(numbers))
        flagged = conn.execute(
            "SELECT f.query_id, f.pass_index, g.verify_score FROM (SELECT DISTINCT query_id, pass_index"
            " FROM quality_flags WHERE teacher_id = :t) f JOIN grades g ON g.query_id = f.query_id"
            " AND g.teacher_id = :t AND g.pass_index = f.pass_index WHERE g.verify_score IS NOT NULL",
            {"t": teacher_id}).fetchall() if filtered else []
    finally:
        if not outer:
            conn.execute("COMMIT")
    small, masks = numbers["small"], (numbers["mask_one"], numbers["mask_two"])
    codes = small % 16 - 1
    categories = np.array([*CATEGORIES, None], dtype=object)[codes]
    # With every pass inside the masks, a stage's count of responses is its mask's count of bits.
    facts = QueryFacts(ids, categories, (small // 16).astype(np.float64), numbers["total"],
                       numbers["total_sq"], popcount(masks[0]), popcount(masks[1]), codes, masks)
    _drop_flagged(recipe, facts, flagged)
    return facts


_NUMBERS = np.dtype([("small", np.int64), ("total", np.float64), ("total_sq", np.float64),
                     ("mask_one", np.int64), ("mask_two", np.int64)])


def _summary_numbers(conn: sqlite3.Connection, where: str, teacher_id: str, mask_one: str,
                     mask_two: str) -> np.ndarray:
    """Each summary's numbers, streamed from the cursor into one record array (40 bytes a query; a
    list of row tuples first cost about 200 bytes a query and was selection's peak memory): the
    category code and n packed as (code + 1) + 16 n, the score sums, and the masks of the passes
    above each stage's cut."""
    cur = conn.execute(f"SELECT ({summaries.CATEGORY_CODE} + 1) + 16 * n, total, total_sq, {mask_one},"
                       f" {mask_two} {where}", (teacher_id,))
    return np.fromiter(cur, dtype=_NUMBERS)


def _query_ids(conn: sqlite3.Connection, where: str, teacher_id: str, n: int) -> np.ndarray:
    """The summaries' query ids in order, joined by SQLite into one string and split (0.2 s against
    0.5 s for a row each at 1M queries); a row each when an id holds the separator or the join did
    not keep the order (SQL does not promise it)."""
    joined = conn.execute(f"SELECT group_concat(query_id, char(31)) FROM (SELECT query_id {where})",
                          (teacher_id,)).fetchone()[0]
    ids = np.array(joined.split("\x1f") if joined is not None else [], dtype=object)
    if len(ids) != n or not np.all(ids[1:] > ids[:-1]):
        ids = np.array([q for (q,) in conn.execute(f"SELECT query_id {where}", (teacher_id,))], dtype=object)
    return ids


def _drop_flagged(recipe: Recipe, f: QueryFacts, flagged: list[tuple[str, int, float]]) -> None:
    """Take the flagged responses out of their queries' pass and eligible counts and masks."""
    if not flagged or not len(f.query_ids):
        return
    qids = np.array([q for q, _, _ in flagged], dtype=object)
    passes = np.array([p for _, p, _ in flagged], dtype=np.int64)
    score = np.array([s for _, _, s in flagged], dtype=np.float64)
    at = np.minimum(np.searchsorted(f.query_ids, qids), len(f.query_ids) - 1)
    mine = f.query_ids[at] == qids  # flags of queries outside the training split are not ours
    at, score, passes = at[mine], score[mine], passes[mine]
    codes = f.codes[at]
    above_one = score > thresholds_by_code(recipe, codes)
    above_two = score > stage_two_cuts_by_code(recipe, codes)
    np.subtract.at(f.n_pass, at, above_one.astype(np.int64))
    np.subtract.at(f.n_eligible, at, above_two.astype(np.int64))
    if f.masks is not None:  # a flagged pass's bit is set exactly where it was counted
        bit = np.left_shift(np.int64(1), passes)
        for masks, above in zip(f.masks, (above_one, above_two), strict=True):
            np.subtract.at(masks, at[above], bit[above])


def compute_selection(store: Store, recipe: Recipe, name: str,
                      loaded: tuple[str, Responses] | None = None) -> list[Selection]:
    """Stage I as NAME (and Stage II as NAME-stage2 when enabled); nothing is stored. Decided from
    the score summaries, or from ``loaded`` responses already read (so that a rule can be
    re-evaluated in memory as it is edited), or from the responses when the summaries cannot serve."""
    if loaded is None:
        tid = training_teacher(store, recipe)
        found = summary_facts(store, recipe, tid)
        if found is not None:
            if not len(found.n):
                raise _no_grades(recipe)
            return planned_selections(store, recipe, tid, name, found)
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
    return {"name": sel.name, "members": sel.n_members, "tokens": sel.n_tokens, "counts": sel.counts,
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
            conn.execute("DELETE FROM selection_passes WHERE selection = ?", (sel.name,))
            conn.execute("DELETE FROM selections WHERE name = ?", (sel.name,))
            sel.write_members(conn)
            rows = len(sel.bits.masks) if sel.bits is not None else sel.n_members
            sel.n_tokens = token_total(conn, sel.name, sel.n_members / max(rows, 1))
            conn.execute(
                "INSERT INTO selections (name, rule, seed, counts, n_members, n_tokens, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sel.name, json.dumps(sel.rule, sort_keys=True), sel.seed,
                 json.dumps(sel.counts, sort_keys=True), sel.n_members, sel.n_tokens, now),
            )


def list_selections(store: Store) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT name, seed, counts, n_members, n_tokens, created_at, rule FROM selections"
        " ORDER BY created_at DESC, name").fetchall()
    return [{"name": n, "seed": s, "counts": json.loads(c), "members": m, "tokens": t,
             "created_at": at, "rule": json.loads(rule)} for n, s, c, m, t, at, rule in rows]
