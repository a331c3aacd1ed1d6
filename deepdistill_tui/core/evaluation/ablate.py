"""`ablate`: the paper's two findings measured on the user's own query pool (docs/PAPER.md sections 5-6).

Arms, each through the normal stages (a stored selection, ``train``, ``evaluate``):

  base     the student untrained; every delta is against it, so it is always evaluated
  cv       Algorithm 1's Stage I selection: does difficulty-aware data teach more...
  random   ...than as many passing responses, of about as many tokens, drawn at random?
  all      every passing response of the training teacher
  low-lr   the ``cv`` data at a tenth of the recipe's learning rate: does reasoning SFT need a high one?

Resumable: each arm's selection, training run and finished row are kept in ``ablations``. A rerun skips
finished arms, evaluates a trained one, and resumes an unfinished training run from its checkpoint. A
row made from another pool (new grades) or another recipe is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepdistill_tui.core.difficulty.quality import exclusions
from deepdistill_tui.core.difficulty.responses import Responses, thresholds_of
from deepdistill_tui.core.difficulty.selection import (
    Selection,
    rule_of,
    save_selections,
    stage_one,
    training_responses,
)
from deepdistill_tui.core.errors import DeepDistillError, StageStopped
from deepdistill_tui.core.evaluation.intervals import Interval
from deepdistill_tui.core.pipeline.context import Result, RunContext
from deepdistill_tui.core.pipeline.events import AblateArm
from deepdistill_tui.core.pipeline.params import EvalParams, TrainParams
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store

ARMS = ("base", "cv", "random", "all", "low-lr")
LOW_LR_FACTOR = 0.1
RANDOM_DRAWS = 256
"""Seeded draws of the ``random`` arm; the one closest to ``cv``'s token count is kept."""


def parse_arms(spec: str | None) -> list[str]:
    """Arms from "a,b" in ARMS order; ``base`` always, since every delta is against it."""
    if not spec:
        return list(ARMS)
    wanted = [a.strip() for a in spec.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in ARMS]
    if unknown or not wanted:
        raise DeepDistillError(f"unknown arm(s) {', '.join(unknown) or '(none)'}; known: {', '.join(ARMS)}")
    return [a for a in ARMS if a in wanted or a == "base"]


@dataclass(frozen=True)
class Pool:
    """The training teacher's passing responses: what every arm's data is drawn from."""

    teacher_id: str
    responses: Responses
    passing: np.ndarray  # per response row
    tokens: np.ndarray  # per response row
    cv: Selection

    def fingerprint(self, recipe: Recipe) -> str:
        """Changes when the pool or the recipe values that shape an arm change: its row is redone."""
        blob = json.dumps([self.teacher_id, len(self.passing), int(self.passing.sum()),
                           float(self.responses.score.sum()), recipe.training.model_dump(mode="json"),
                           recipe.selection.model_dump(mode="json"), recipe.eval.model_dump(mode="json")],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_pool(store: Store, recipe: Recipe) -> Pool:
    tid, r = training_responses(store, recipe)
    excluded = exclusions(store, recipe.selection.quality, tid, r)
    passing = (r.score > thresholds_of(recipe, r.categories)) & ~excluded.any
    tokens = _tokens(store, tid, r)
    return Pool(tid, r, passing, tokens, stage_one(store, recipe, r, tid, "cv", excluded))


def _tokens(store: Store, teacher_id: str, r: Responses) -> np.ndarray:
    found = {(q, p): n for q, p, n in store.conn.execute(
        "SELECT query_id, pass_index, tokens FROM sample_tokens WHERE teacher_id = ?", (teacher_id,))}
    return np.array([found.get((q, int(p)), 0) for q, p in
                     zip(r.query_ids.tolist(), r.pass_index.tolist(), strict=True)], dtype=np.int64)


def arm_selection(pool: Pool, recipe: Recipe, arm: str) -> Selection:
    """The arm's training data as a selection named ``RECIPE-ablate-ARM``."""
    r, tid = pool.responses, pool.teacher_id
    if arm in ("cv", "low-lr"):
        rows = np.flatnonzero(_member_rows(pool))
    elif arm == "all":
        rows = np.flatnonzero(pool.passing)
    elif arm == "random":
        rows = _random_rows(pool, recipe.selection.seed)
    else:
        raise DeepDistillError(f"arm {arm!r} trains on nothing")
    # Each chosen row's id from its query's (``query_ids`` would build one id per response per row).
    members = [(str(q), tid, int(p), 1) for q, p in
               zip(r.row_query_ids(rows).tolist(), r.pass_index[rows].tolist(), strict=True)]
    rule = {**rule_of(recipe, stage=1), "ablation_arm": arm}
    counts = {"responses_kept": len(members), "tokens": int(pool.tokens[rows].sum()) if len(rows) else 0}
    return Selection(f"{recipe.name}-ablate-{arm}", rule, recipe.selection.seed, counts, members)


def _member_rows(pool: Pool) -> np.ndarray:
    """Which response rows the ``cv`` selection keeps."""
    keep = {(q, p) for q, _, p, _ in pool.cv.members}
    r = pool.responses
    return np.array([(q, int(p)) in keep for q, p in
                     zip(r.query_ids.tolist(), r.pass_index.tolist(), strict=True)], dtype=bool)


def _random_rows(pool: Pool, seed: int) -> np.ndarray:
    """As many passing responses as ``cv`` keeps, drawn with a seeded generator; of RANDOM_DRAWS
    draws, the one whose token count is closest to ``cv``'s (so that neither arm wins on volume)."""
    cv_rows = _member_rows(pool)
    n, target = int(cv_rows.sum()), int(pool.tokens[cv_rows].sum())
    candidates = np.flatnonzero(pool.passing)
    rng = np.random.default_rng(seed)
    best, best_gap = candidates[:0], None
    for _ in range(RANDOM_DRAWS):
        draw = np.sort(rng.choice(candidates, size=n, replace=False))
        gap = abs(int(pool.tokens[draw].sum()) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = draw, gap
    return best


def arm_recipe(recipe: Recipe, arm: str) -> Recipe:
    if arm != "low-lr":
        return recipe
    training = recipe.training.model_copy(
        update={"learning_rate": recipe.training.learning_rate * LOW_LR_FACTOR})
    return recipe.model_copy(update={"training": training})


# ---------------------------------------------------------------- the command


@dataclass(frozen=True)
class AblateResult(Result):
    arms: list[dict[str, Any]]
    """The finished arms in ARMS order (the ablation table's rows)."""
    contrasts: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        return {"arms": self.arms, "contrasts": self.contrasts}


def ablate(store: Store, recipe: Recipe, arms: list[str], run: RunContext) -> list[dict[str, Any]]:
    """Sample and grade what is missing, then train and evaluate each arm not yet done, each through
    the normal stages; the table of finished arms."""
    run.pipeline(recipe, ["ingest", "sample", "grade"])
    pool = load_pool(store, recipe)
    if not pool.cv.members:
        raise DeepDistillError(f"recipe {recipe.name}: the cv selection keeps no response; nothing to "
                               "ablate (the statistics show the pass rates and CV)")
    fingerprint = pool.fingerprint(recipe)
    for arm in arms:
        if run.stopped:
            raise StageStopped("ablation stopped; run it again to resume")
        state = _arm_state(store, recipe, arm)
        if state.get("result") and state.get("pool") == fingerprint:
            run.emit(AblateArm(arm, "skipped"))
            continue
        run.emit(AblateArm(arm, "started"))
        row = _run_arm(store, recipe, pool, arm, fingerprint, run)
        run.emit(AblateArm(arm, "finished", row))
    return ablation_table(store, recipe, arms)


def _run_arm(store: Store, recipe: Recipe, pool: Pool, arm: str, fingerprint: str,
             run: RunContext) -> dict[str, Any]:
    if arm == "base":
        run.stage("eval", recipe, EvalParams("base"))
        return _save_arm(store, recipe, arm, None, None, fingerprint,
                         {"arm": arm, "responses": 0, "tokens": 0, "steps": 0, "final_loss": None,
                          "learning_rate": None, "model": "base"})
    sel = arm_selection(pool, recipe, arm)
    state = _arm_state(store, recipe, arm)
    if state.get("selection") != sel.name or state.get("pool") != fingerprint:
        save_selections(store, [sel])  # a resumed arm keeps the selection its checkpoints trained on
        _save_arm(store, recipe, arm, sel.name, None, fingerprint, None)
    run_id, s = _trained(store, recipe, arm, sel.name, state, fingerprint, run)
    run.stage("eval", recipe, EvalParams(run_id))
    return _save_arm(store, recipe, arm, sel.name, run_id, fingerprint,
                     {"arm": arm, "responses": len(sel.members), "tokens": sel.counts["tokens"],
                      "steps": s.get("steps"), "final_loss": s.get("last_loss"),
                      "learning_rate": arm_recipe(recipe, arm).training.learning_rate, "model": run_id})


def _trained(store: Store, recipe: Recipe, arm: str, selection: str, state: dict[str, Any],
             fingerprint: str, run: RunContext) -> tuple[str, dict[str, Any]]:
    """The arm's finished training run and its summary: trained now, or earlier from this pool."""
    earlier = store.run(state["train_run"]) if state.get("train_run") else None
    if earlier and earlier["status"] == "ok" and state.get("pool") == fingerprint:
        return str(earlier["run_id"]), earlier["result"] or {}
    trained = run.stage("train", arm_recipe(recipe, arm), TrainParams(selection=selection))
    run_id = str(trained.run_id)
    _save_arm(store, recipe, arm, selection, run_id, fingerprint, None)
    return run_id, trained.summary  # the same keys as an earlier run's stored result


def _arm_state(store: Store, recipe: Recipe, arm: str) -> dict[str, Any]:
    row = store.conn.execute("SELECT selection, train_run, result FROM ablations"
                             " WHERE recipe_name = ? AND arm = ?", (recipe.name, arm)).fetchone()
    if row is None:
        return {}
    result = json.loads(row[2]) if row[2] else {}
    return {"selection": row[0], "train_run": row[1], "result": result.get("row"),
            "pool": result.get("pool")}


def _save_arm(store: Store, recipe: Recipe, arm: str, selection: str | None, train_run: str | None,
              fingerprint: str, row: dict[str, Any] | None) -> dict[str, Any]:
    with store.write() as conn:
        conn.execute(
            "INSERT INTO ablations (recipe_name, arm, selection, train_run, result, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(recipe_name, arm) DO UPDATE SET"
            " selection = excluded.selection, train_run = excluded.train_run,"
            " result = excluded.result, updated_at = excluded.updated_at",
            (recipe.name, arm, selection, train_run, json.dumps({"pool": fingerprint, "row": row}),
             time.time()))
    return row or {}


def arm_models(store: Store, recipe: Recipe) -> dict[str, str]:
    """The evaluated model (``base`` or a run id) of each finished arm, mapped to the arm's name."""
    out = {}
    for arm in ARMS:
        row = _arm_state(store, recipe, arm).get("result")
        if row:
            out[str(row["model"])] = arm
    return out


def ablation_table(store: Store, recipe: Recipe, arms: list[str] | None = None) -> list[dict[str, Any]]:
    """Finished arms in ARMS order, each with its evaluation (pass@1, interval, delta vs base)."""
    from deepdistill_tui.core.evaluation.evaluate import comparison

    evals = {e["model"]: e for e in comparison(store, recipe)}
    out = []
    for arm in arms or ARMS:
        row = _arm_state(store, recipe, arm).get("result")
        if not row or row["model"] not in evals:
            continue
        e = evals[row["model"]]
        out.append({**row, "pass_at_1": e["pass_at_1"], "ci_low": e["ci_low"], "ci_high": e["ci_high"],
                    "problems": e["problems"], "k": e["k"], "by_category": e["by_category"],
                    "delta_vs_base": e.get("delta_vs_base")})
    return out


CONTRASTS = (("cv", "random"), ("cv", "all"), ("cv", "low-lr"))
"""The paper's questions: does CV-selected data teach more than as much random data, or than all of
it; does the same data teach as much at a tenth of the learning rate?"""


def contrasts(store: Store, recipe: Recipe, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences between finished arms over the same problems, with their intervals."""
    from deepdistill_tui.core.evaluation.intervals import paired_difference, significance

    models = {r["arm"]: r["model"] for r in rows}
    per_query = {m: json.loads(pq) for m, pq in store.conn.execute(
        "SELECT model, per_query FROM evals WHERE recipe_name = ? AND split = ? AND per_query IS NOT NULL"
        " ORDER BY queries, k, created_at", (recipe.name, recipe.eval.split))}  # the largest one wins
    out = []
    for a, b in CONTRASTS:
        if a not in models or b not in models or models[b] not in per_query or models[a] not in per_query:
            continue
        pa, pb = per_query[models[a]], per_query[models[b]]
        common = sorted(set(pa) & set(pb))
        delta, lo, hi = paired_difference([pb[q][1] for q in common], [pa[q][1] for q in common],
                                          recipe.seed)
        out.append({"arm": a, "against": b, "delta": delta, "ci_low": lo, "ci_high": hi,
                    "problems": len(common), "verdict": significance(lo, hi, than=b)})
    return out


# ---------------------------------------------------------------- the report


def table_cells(r: dict[str, Any]) -> list[str]:
    """One arm's row as text: arm, responses, tokens, steps, final loss, pass@1 [CI], delta [CI]."""
    d = r.get("delta_vs_base") or {}
    delta = Interval.of_difference(d).points() if d.get("problems") else "-"
    loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
    return [r["arm"], str(r["responses"]), str(r["tokens"]), str(r["steps"]), loss,
            Interval.of_rate(r).rate(), delta]


def contrast_text(c: dict[str, Any]) -> str:
    return (f"{c['arm']} vs {c['against']}: {Interval.of_difference(c).points()} points, "
            f"{c['verdict'].split(' (')[0]}")


def markdown_report(recipe: Recipe, rows: list[dict[str, Any]], command: str,
                    pairs: list[dict[str, Any]] | None = None) -> str:
    """The table as Markdown, with the command and the machine that produced it."""
    lines = [f"# Ablation: recipe `{recipe.name}`", "",
             f"Command: `{command}`  ", f"Machine: {machine()}  ",
             f"Date: {time.strftime('%Y-%m-%d', time.gmtime())}", "",
             "| arm | responses | tokens | optimizer steps | final loss | pass@1 % [95% CI] "
             "| delta vs base, points [95% CI] |",
             "|---|---:|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    if rows:
        lines += ["", f"{rows[0]['problems']} held-out problems, k = {rows[0]['k']} answers each; "
                  "intervals are 95% bootstrap intervals over problems (seeded), and the delta's is "
                  "paired over the same problems.", ""]
        lines += [f"- {r['arm']}: {r['delta_vs_base']['verdict']}." for r in rows
                  if (r.get("delta_vs_base") or {}).get("problems")]
    if pairs:
        lines += ["", "Between arms, paired over the same problems:", ""]
        lines += [f"- {contrast_text(c)}." for c in pairs]
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = _cpu_model() or platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _cpu_model() -> str | None:
    """The CPU's marketing name on Linux (platform.processor() there is only the architecture)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
