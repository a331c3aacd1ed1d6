"""The one way in: ``run_stage`` runs any stage of the pipeline for any face.

The CLI, the app and ``run`` all call ``run_stage(store, name, recipe, params, ctx)``: typed params in,
a typed result out, progress through ``ctx.emit``, an early end through ``ctx.stop``. The runner owns
what every stage shares: the ``runs`` row (with the resolved recipe, the params and the result), the
failure rules (an error fails the row and reaches the caller as a ``DeepDistillError``; a stop marks
it ``interrupted`` and raises ``StageStopped``), and the events around the stage.

The stages themselves, their params and their adapters are in ``registry.py``, ``params.py`` and
``context.py``; this module is the runner alone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError, StageError, StageStopped
from deepdistill_tui.core.pipeline.context import Result, RunContext, StageContext, StageResult
from deepdistill_tui.core.pipeline.events import (
    StageFailed,
    StageFinished,
    StageSkipped,
    StageStarted,
    noop,
)
from deepdistill_tui.core.pipeline.registry import PIPELINE, STAGES, Stage, inputs_hash
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store


def run_stage(store: Store, name: str, recipe: Recipe | None, params: Any = None,
              ctx: StageContext | None = None, *, skip_if_done: bool = False) -> StageResult:
    """Run one stage under a ``runs`` row and return its summary.

    ``skip_if_done``: a stage with recipe inputs that already succeeded for the same values is not
    run again (how ``run`` resumes a pipeline)."""
    stage = _stage(name)
    ctx = ctx or StageContext(noop)
    params = params if params is not None else stage.params()
    if not isinstance(params, stage.params):
        raise TypeError(f"stage {name} takes {stage.params.__name__}, not {type(params).__name__}")
    if recipe is None and stage.needs_recipe:
        raise DeepDistillError(f"stage {name} needs a recipe")
    key = inputs_hash(stage, recipe) if recipe is not None else None
    if skip_if_done and key is not None and recipe is not None and store.stage_done(name, recipe.name, key):
        ctx.emit(StageSkipped(name, "already done for the same recipe values"))
        return StageResult(name, None, {}, skipped=True)
    run_id = _open_run(store, stage, recipe, params, key, ctx.face)
    face = ctx

    def children(child: str, child_recipe: Recipe, child_params: Any, skip: bool) -> StageResult:
        return run_stage(store, child, child_recipe, child_params, face, skip_if_done=skip)

    run = RunContext(run_id, ctx.emit, ctx.stop, children)
    ctx.emit(StageStarted(name, run_id))
    result = _guarded(store, stage, recipe, params, run)
    summary = result.summary()  # serialised once: the runs row, the event and --json share it
    store.finish_run(run_id, "ok", summary)
    ctx.emit(StageFinished(name, run_id, summary))
    return StageResult(name, run_id, summary, result=result)


def _stage(name: str) -> Stage:
    if name not in STAGES:
        raise DeepDistillError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def _open_run(store: Store, stage: Stage, recipe: Recipe | None, params: Any, key: str | None,
              face: str) -> str:
    """A new ``runs`` row, or the unfinished one the stage takes up again (training resumes)."""
    previous = stage.resumes(store, recipe, params) if stage.resumes and recipe else None
    if previous is not None:
        store.resume_run(previous)
        return previous
    args = {k: v for k, v in asdict(params).items() if v is not None}
    if key is not None:
        args["inputs"] = key
    return store.start_run(stage.name, recipe.name if recipe else None,
                           recipe.to_json() if recipe else None, args, face)


def _guarded(store: Store, stage: Stage, recipe: Recipe | None, params: Any,
             run: RunContext) -> Result:
    """The stage's summary; on any way out but success, the row says how it ended and the face hears."""
    def ended(status: str, error: str, summary: Any = None) -> None:
        store.finish_run(run.run_id, status, summary, error=error)
        run.emit(StageFailed(stage.name, run.run_id, error, stopped=status == "interrupted"))

    try:
        result = stage.run(store, recipe, params, run)
    except StageStopped as exc:
        ended("interrupted", str(exc))
        raise
    except StageError as exc:
        ended("failed", str(exc), exc.summary)
        raise
    except KeyboardInterrupt:
        ended("interrupted", "interrupted")
        raise
    except BaseException as exc:
        ended("failed", str(exc) or type(exc).__name__)
        raise
    if run.stopped:
        # The stage honoured the stop at a safe point: what it finished is stored, the rest is left.
        message = f"{stage.name} stopped; run it again to pick up where it stopped"
        ended("interrupted", message, result.summary())
        raise StageStopped(message)
    return result


def run_pipeline(store: Store, recipe: Recipe, stages: list[str] | None = None, *, force: bool = False,
                 ctx: StageContext | None = None) -> dict[str, StageResult]:
    """The stages in order, each through ``run_stage``; those already done for the same recipe values
    are skipped unless ``force``."""
    return {name: run_stage(store, name, recipe, None, ctx, skip_if_done=not force)
            for name in (stages or PIPELINE)}
