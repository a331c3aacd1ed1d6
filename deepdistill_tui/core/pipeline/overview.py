"""What is done and what is next, read from the store: the numbers behind the app's overview."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.recipe import LlamaCppTeacher, OpenAITeacher, Recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.weights.download import cached_snapshot
from deepdistill_tui.core.weights.files import locate


@dataclass
class ModelStatus:
    role: str
    name: str
    origin: str
    present: bool


@dataclass
class Overview:
    counts: dict[str, int]
    queries_by_split: dict[str, int]
    queries_by_category: dict[str, int]
    models: list[ModelStatus] = field(default_factory=list)
    last_ingest: dict[str, Any] | None = None
    next_step: tuple[str, str] = ("", "")
    """(stage, why): see suggest_next."""


def _group_counts(store: Store, column: str) -> dict[str, int]:
    rows = store.conn.execute(f"SELECT {column}, count(*) FROM queries GROUP BY {column}").fetchall()
    return {str(k): int(n) for k, n in rows}


def model_statuses(recipe: Recipe) -> list[ModelStatus]:
    out = []
    for t in recipe.teachers:
        if isinstance(t, LlamaCppTeacher):
            out.append(ModelStatus("teacher", t.name, t.model.describe(), locate(t.model) is not None))
        else:
            where = t.base_url if isinstance(t, OpenAITeacher) else "released data"
            out.append(ModelStatus("teacher", t.name, f"{t.backend} {where}", True))
    student = recipe.training.student
    if student.hf_model is not None:
        present = Path(student.hf_model).is_dir() or cached_snapshot(student.hf_model) is not None
        out.append(ModelStatus("student", student.name, f"hf={student.hf_model}", present))
    if student.model is not None:
        out.append(ModelStatus("student GGUF" if student.hf_model else "student", student.name,
                               student.model.describe(), locate(student.model) is not None))
    return out


def overview(store: Store, recipe: Recipe) -> Overview:
    ov = Overview(
        counts=store.table_counts(),
        queries_by_split=_group_counts(store, "split"),
        queries_by_category=_group_counts(store, "category"),
        models=model_statuses(recipe),
        last_ingest=store.last_run("ingest"),
    )
    ov.next_step = suggest_next(store, recipe, ov)
    return ov


def suggest_next(store: Store, recipe: Recipe, ov: Overview) -> tuple[str, str]:
    """(the stage to run next, why), from the store's state, in the store's terms; each face says how
    (a key, a command). The first of: no queries, passes missing, responses ungraded, no selection, a
    selection newer than the last training, a trained student not evaluated; else done, with the
    student's gain."""
    if ov.counts["queries"] == 0:
        return "ingest", "Ingest the recipe's queries."
    missing, ungraded = _work_left(store, recipe)
    if missing:
        absent = [m.name for m in ov.models if not m.present]
        fetched = f" ({', '.join(absent)} will be downloaded first)" if absent else ""
        return "sample", f"Sample answers from the teachers: {missing} passes are missing{fetched}."
    if ungraded:
        return "grade", f"Grade the new samples: {ungraded} responses have no grade yet."
    newest = store.conn.execute(
        "SELECT name, created_at FROM selections ORDER BY created_at DESC LIMIT 1").fetchone()
    if newest is None:
        return "select", "Look at the statistics, then save a selection."
    trained = _latest_training(store, recipe)
    if trained is None or (trained["finished_at"] or 0) < newest[1]:
        newer = "" if trained is None else " (the selection is newer than the last training)"
        return "train", f"Train the student on the selection {newest[0]!r}{newer}."
    return _after_training(store, recipe, str(trained["run_id"]))


def _work_left(store: Store, recipe: Recipe) -> tuple[int, int]:
    """(passes not yet sampled, responses without a grade) over the teachers the recipe samples and
    the training queries it samples (the first ``sampling.query_limit`` by id, as the sampler takes
    them)."""
    from deepdistill_tui.core.difficulty.responses import resolve_teachers
    from deepdistill_tui.core.difficulty.stats import missing_counts

    names = [t.name for t in recipe.sampled_teachers()]
    ids = resolve_teachers(store, names)
    passes, limit = recipe.sampling.passes, recipe.sampling.query_limit
    train = store.scalar("SELECT count(*) FROM queries WHERE split = 'train'") or 0
    sampled = min(train, limit) if limit else train
    missing = sampled * passes * (len(names) - len(ids))  # teachers never sampled
    ungraded = 0
    for tid in ids.values():
        counts = missing_counts(store, tid, passes).values()
        ungraded += sum(c["ungraded"] for c in counts)
        missing += (_missing_in_limit(store, tid, passes, limit) if limit and limit < train
                    else sum(c["missing_passes"] for c in counts))
    return missing, ungraded


def _missing_in_limit(store: Store, teacher_id: str, passes: int, limit: int) -> int:
    """Passes missing over the first ``limit`` training queries: one index lookup per query."""
    return int(store.scalar(
        "SELECT coalesce(sum(max(0, ? - (SELECT count(*) FROM samples s WHERE s.query_id = q.query_id"
        " AND s.teacher_id = ?))), 0) FROM (SELECT query_id FROM queries WHERE split = 'train'"
        " ORDER BY query_id LIMIT ?) q", (passes, teacher_id, limit)) or 0)


def _latest_training(store: Store, recipe: Recipe) -> dict[str, Any] | None:
    """The recipe's newest finished training run, on whichever selection (the app names its own)."""
    runs = store.runs("train", recipe.name, statuses=("ok",))
    return max(runs, key=lambda r: r["finished_at"] or 0, default=None)


def _after_training(store: Store, recipe: Recipe, run_id: str) -> tuple[str, str]:
    from deepdistill_tui.core.evaluation.evaluate import comparison
    from deepdistill_tui.core.evaluation.intervals import Interval

    rows = {r["model"]: r for r in comparison(store, recipe)}
    if "base" not in rows or run_id not in rows:
        return "eval", f"Evaluate the trained student (run {run_id}) against its base."
    d = rows[run_id].get("delta_vs_base") or {}
    if not d.get("problems"):
        return "eval", f"Evaluate the trained student (run {run_id}) against its base."
    gain = Interval.of_difference(d).points()
    return "done", (f"Done: the student gained {gain} points of pass@1. Next: compare the paper's arms"
                    " (ablate), export the selection, or scale out (cluster-export).")
