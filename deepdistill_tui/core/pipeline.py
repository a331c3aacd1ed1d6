"""The pipeline's stages in order, each recorded as a row of ``runs`` with the resolved recipe.

A stage is skipped when it already succeeded for the same inputs (the part of the recipe it depends on,
hashed), so ``run`` can be repeated after an interruption and only does what is left.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdistill_tui.core.am_import import import_am
from deepdistill_tui.core.errors import DeepDistillError, InputError
from deepdistill_tui.core.ingest import ingest
from deepdistill_tui.core.recipe import Recipe, resolve_data_path
from deepdistill_tui.core.store import Store

Emit = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    run: Callable[[Store, Recipe, Emit], dict[str, Any]]
    inputs: Callable[[Recipe], Any]
    """The recipe values this stage's result depends on; a change makes the stage run again."""
    always: bool = False
    """Stages that resume from the store's own state (sample, grade) run every time; they skip
    finished work themselves."""


def am_files(recipe: Recipe) -> list[Path]:
    files: list[Path] = []
    for src in recipe.data.sources:
        if src.format != "am":
            continue
        pattern = str(resolve_data_path(src.path)) if not Path(src.path).is_absolute() else src.path
        matched = sorted(Path(p) for p in glob.glob(pattern))
        if not matched:
            raise InputError(f"recipe {recipe.name}: data.sources: no AM files match {src.path}")
        files.extend(matched)
    return files


def run_ingest(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if any(s.format != "am" for s in recipe.data.sources):
        emit({"event": "stage_progress", "stage": "ingest", "message": "reading sources"})
        result["ingest"] = ingest(store, recipe.data, seed=recipe.seed).as_dict()
    files = am_files(recipe)
    if files:
        emit({"event": "stage_progress", "stage": "ingest", "message": f"importing {len(files)} AM files"})
        result["import_am"] = import_am(store, files, thresholds=dict(recipe.grading.thresholds)).as_dict()
    return result


def run_sample(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    from deepdistill_tui.core.sample import sample

    reports = [r.as_dict() for r in sample(store, recipe, emit=emit)]
    failed = [r for r in reports if r["error"]]
    if failed:
        raise DeepDistillError("; ".join(r["error"] for r in failed))
    return {"teachers": reports}


def run_grade(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    from deepdistill_tui.core.grade import grade_store

    return grade_store(store, recipe, emit=emit)


def run_select(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    from deepdistill_tui.core.select import run_selection

    return {"selections": [{"name": s.name, "members": len(s.members), "tokens": s.n_tokens,
                            "counts": s.counts} for s in run_selection(store, recipe, recipe.name)]}


def run_train(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    from deepdistill_tui.core.train import train

    return train(store, recipe, recipe.name, emit=emit)


def run_eval(store: Store, recipe: Recipe, emit: Emit) -> dict[str, Any]:
    """Base and the latest trained student, side by side (the end of `run --recipe tiny`)."""
    from deepdistill_tui.core.evaluate import comparison, evaluate, latest_trained_run

    evaluate(store, recipe, "base", emit=emit)
    trained = latest_trained_run(store, recipe)
    if trained:
        evaluate(store, recipe, trained, emit=emit)
    return {"evals": comparison(store, recipe)}


def _from_store(recipe: Recipe) -> Any:
    # These stages work from what the store holds (new queries, samples, grades can arrive at any
    # time), so they always run and find the remaining work themselves; none is cheap to skip.
    return None


STAGES: list[Stage] = [
    Stage("ingest", "read, clean, dedup and decontaminate the queries", run_ingest,
          lambda r: r.data.model_dump(mode="json")),
    Stage("sample", "answer each training query N times with every teacher", run_sample,
          _from_store, always=True),
    Stage("grade", "a verify_score for every ungraded sample", run_grade, _from_store, always=True),
    Stage("select", "Algorithm 1 (and Stage II) into a selection named after the recipe", run_select,
          _from_store, always=True),
    Stage("train", "SFT of the student on the recipe's selection", run_train,
          lambda r: [r.training.model_dump(mode="json"), r.selection.model_dump(mode="json")]),
    Stage("eval", "pass@1 of the base and the trained student on the held-out split", run_eval,
          _from_store, always=True),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def parse_stages(spec: str | None) -> list[Stage]:
    if not spec:
        return list(STAGES)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    by_name = {s.name: s for s in STAGES}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise DeepDistillError(f"--stages: unknown stage(s) {', '.join(unknown)}; "
                               f"known: {', '.join(by_name)}")
    return [s for s in STAGES if s.name in wanted]  # pipeline order, whatever order was given


def inputs_hash(stage: Stage, recipe: Recipe) -> str:
    blob = json.dumps(stage.inputs(recipe), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def already_done(store: Store, stage: Stage, recipe: Recipe) -> bool:
    key = inputs_hash(stage, recipe)
    row = store.conn.execute(
        "SELECT 1 FROM runs WHERE command = ? AND recipe_name = ? AND status = 'ok'"
        " AND json_extract(args, '$.inputs') = ? LIMIT 1",
        (stage.name, recipe.name, key),
    ).fetchone()
    return row is not None


def run_stage(store: Store, stage: Stage, recipe: Recipe, emit: Emit = _noop,
              args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage under a ``runs`` row; the row says ok or failed, with the error."""
    run_args = {**(args or {}), "inputs": inputs_hash(stage, recipe)}
    with store.recorded_run(stage.name, recipe.name, recipe.to_json(), run_args) as run:
        emit({"event": "stage_started", "stage": stage.name, "run_id": run["run_id"]})
        try:
            run["result"] = stage.run(store, recipe, emit)
        except BaseException as exc:
            emit({"event": "stage_failed", "stage": stage.name, "run_id": run["run_id"],
                  "error": str(exc)})
            raise
    emit({"event": "stage_finished", "stage": stage.name, "run_id": run["run_id"],
          "result": run["result"]})
    return dict(run["result"])


def run_pipeline(store: Store, recipe: Recipe, stages: list[Stage], *, force: bool = False,
                 emit: Emit = _noop) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stage in stages:
        if not force and not stage.always and already_done(store, stage, recipe):
            emit({"event": "stage_skipped", "stage": stage.name, "reason": "already done"})
            results[stage.name] = "skipped"
            continue
        results[stage.name] = run_stage(store, stage, recipe, emit)
    return results
