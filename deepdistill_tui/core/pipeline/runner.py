"""The one way in: ``run_stage`` runs any stage of the pipeline for any face.

The CLI, the app and ``run`` all call ``run_stage(store, name, recipe, params, ctx)``: typed params in,
a typed result out, progress through ``ctx.emit``, an early end through ``ctx.stop``. The runner owns
what every stage shares: the ``runs`` row (with the resolved recipe, the params and the result), the
failure rules (an error fails the row and reaches the caller as a ``DeepDistillError``; a stop marks
it ``interrupted`` and raises ``StageStopped``), and the events around the stage.

Each stage's work lives in its own module (ingest, sample, grade, select, train, evaluate, export);
the adapters below only translate params into that module's call, imported when the stage runs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError, InputError, StageError, StageStopped
from deepdistill_tui.core.pipeline.events import (
    Emit,
    StageFailed,
    StageFinished,
    StageProgress,
    StageSkipped,
    StageStarted,
    noop,
)
from deepdistill_tui.core.recipe import Recipe, resolve_data_path
from deepdistill_tui.core.store.database import Store


@dataclass(frozen=True)
class StageContext:
    """What a face hands a stage: where its events go and the signal that stops it."""

    emit: Emit
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class RunContext:
    """What a stage gets: the face's context and the ``runs`` row it works under."""

    run_id: str
    emit: Emit
    stop: threading.Event

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()


@dataclass(frozen=True)
class StageResult:
    stage: str
    run_id: str | None
    summary: dict[str, Any]
    skipped: bool = False


# ---------------------------------------------------------------- params, one type per stage


@dataclass(frozen=True)
class IngestParams:
    pass


@dataclass(frozen=True)
class ImportParams:
    files: tuple[str, ...]


@dataclass(frozen=True)
class SampleParams:
    teacher: str | None = None
    """Only this teacher (default: every teacher that samples)."""
    limit: int | None = None
    """Only the first N training queries (default: the recipe's ``sampling.query_limit``)."""


@dataclass(frozen=True)
class GradeParams:
    workers: int | None = None


@dataclass(frozen=True)
class SelectParams:
    name: str | None = None
    """The selection's name (default: the recipe's); Stage II is stored as NAME-stage2."""


@dataclass(frozen=True)
class TrainParams:
    selection: str | None = None
    """The selection to train on (default: the recipe's own, as ``select`` names it)."""
    fresh: bool = False
    """Start a new run even when an unfinished one of the same recipe and selection can resume."""
    runs_dir: str | None = None
    """Where run folders go (default: ``runs/`` beside the store)."""


@dataclass(frozen=True)
class EvalParams:
    model: str | None = None
    """``base``, a training run's id, ``latest``; None: the base and the latest trained student."""


@dataclass(frozen=True)
class ExportParams:
    selection: str
    format: str
    out: str


@dataclass(frozen=True)
class AblateParams:
    arms: tuple[str, ...] = ()
    """Which arms (default: all of them); ``base`` is always evaluated."""


Params = (AblateParams | IngestParams | ImportParams | SampleParams | GradeParams | SelectParams | TrainParams
          | EvalParams | ExportParams)


# ---------------------------------------------------------------- the stages' adapters


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


def _ingest(store: Store, recipe: Recipe, p: IngestParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.data.am_import import import_am
    from deepdistill_tui.core.data.ingest import ingest

    result: dict[str, Any] = {}
    if any(s.format != "am" for s in recipe.data.sources):
        run.emit(StageProgress("ingest", "reading sources"))
        result["ingest"] = ingest(store, recipe.data, seed=recipe.seed).as_dict()
    files = am_files(recipe)
    if files:
        run.emit(StageProgress("ingest", f"importing {len(files)} AM files"))
        result["import_am"] = import_am(store, files, thresholds=dict(recipe.grading.thresholds)).as_dict()
    return result


def _import(store: Store, recipe: Recipe | None, p: ImportParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.data.am_import import import_am

    thresholds = dict(recipe.grading.thresholds) if recipe else None
    return {"import_am": import_am(store, list(p.files), thresholds=thresholds).as_dict()}


def _sample(store: Store, recipe: Recipe, p: SampleParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.teachers.sample import sample

    reports = [r.as_dict() for r in sample(store, recipe, teacher_name=p.teacher, limit=p.limit,
                                           emit=run.emit, stop=run.stop)]
    summary = {"teachers": reports}
    failed = [r["error"] for r in reports if r["error"]]
    if failed:
        raise StageError("; ".join(failed), summary)
    return summary


def _grade(store: Store, recipe: Recipe, p: GradeParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.grading.stage import grade_store

    return grade_store(store, recipe, emit=run.emit, stop=run.stop, workers=p.workers)


def _select(store: Store, recipe: Recipe, p: SelectParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.difficulty.selection import run_selection, summary

    name = recipe.name if p.name is None else p.name
    return {"selections": [summary(s) for s in run_selection(store, recipe, name)]}


def _train(store: Store, recipe: Recipe, p: TrainParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.train import train

    return train(store, recipe, _selection(recipe, p), run_id=run.run_id,
                 runs_dir=Path(p.runs_dir) if p.runs_dir else None, emit=run.emit, stop=run.stop)


def _resumable_train(store: Store, recipe: Recipe, p: TrainParams) -> str | None:
    from deepdistill_tui.core.train import resumable_run

    return None if p.fresh else resumable_run(store, recipe, _selection(recipe, p))


def _selection(recipe: Recipe, p: TrainParams) -> str:
    return recipe.name if p.selection is None else p.selection


def _eval(store: Store, recipe: Recipe, p: EvalParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.evaluation.evaluate import comparison, evaluate

    evaluated = []
    for model in _models_to_evaluate(store, recipe, p.model):
        evaluated.append(evaluate(store, recipe, model, emit=run.emit, stop=run.stop))
    return {"evaluated": evaluated, "evals": comparison(store, recipe)}


def latest_trained(store: Store, recipe: Recipe) -> str | None:
    """The recipe's newest finished training run on its own selection (``run``'s), else on any."""
    runs = store.runs("train", recipe.name, statuses=("ok",))
    own = [r for r in runs if r["args"].get("selection") == recipe.name]
    newest = max(own or runs, key=lambda r: r["finished_at"] or 0, default=None)
    return str(newest["run_id"]) if newest else None


def _models_to_evaluate(store: Store, recipe: Recipe, model: str | None) -> list[str]:
    latest = latest_trained(store, recipe)
    if model is None:
        return ["base", *([latest] if latest else [])]
    if model == "latest":
        if latest is None:
            raise DeepDistillError(f"no finished training run for recipe {recipe.name}")
        return [latest]
    return [model]


def _export(store: Store, recipe: Recipe, p: ExportParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.difficulty.export import export

    records = export(store, recipe, p.selection, p.format, p.out)
    return {"records": records, "selection": p.selection, "format": p.format, "path": p.out}


def _ablate(store: Store, recipe: Recipe, p: AblateParams, run: RunContext) -> dict[str, Any]:
    from deepdistill_tui.core.evaluation.ablate import ablate, contrasts, parse_arms

    rows = ablate(store, recipe, parse_arms(",".join(p.arms)), run)
    return {"arms": rows, "contrasts": contrasts(store, recipe, rows)}


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    params: type
    run: Callable[[Store, Any, Any, RunContext], dict[str, Any]]
    inputs: Callable[[Recipe], Any] | None = None
    """The recipe values the stage's result depends on: ``run`` skips a stage that already succeeded
    for the same values. None: the stage works from the store's state (new queries, samples, grades
    can arrive at any time), finds its remaining work itself, and always runs."""
    resumes: Callable[[Store, Recipe, Any], str | None] | None = None
    """An unfinished run of this stage to take up again instead of starting a new one."""
    in_pipeline: bool = True
    needs_recipe: bool = True


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ingest", "read, clean, dedup and decontaminate the queries", IngestParams, _ingest,
          inputs=lambda r: r.data.model_dump(mode="json")),
    Stage("sample", "answer each training query N times with every teacher", SampleParams, _sample),
    Stage("grade", "a verify_score for every ungraded sample", GradeParams, _grade),
    Stage("select", "Algorithm 1 (and Stage II) into a selection named after the recipe", SelectParams,
          _select),
    Stage("train", "SFT of the student on the recipe's selection", TrainParams, _train,
          inputs=lambda r: [r.training.model_dump(mode="json"), r.selection.model_dump(mode="json")],
          resumes=_resumable_train),
    Stage("eval", "pass@1 of the base and the trained student on the held-out split", EvalParams, _eval),
    Stage("export", "a selection as chat-format records", ExportParams, _export, in_pipeline=False),
    Stage("ablate", "train and evaluate the paper's arms on one query pool", AblateParams, _ablate,
          in_pipeline=False),
    Stage("import-am", "AM-DeepSeek-Distilled-40M files into the store", ImportParams, _import,
          in_pipeline=False, needs_recipe=False),
]}
PIPELINE = [s.name for s in STAGES.values() if s.in_pipeline]


def parse_stages(spec: str | None) -> list[str]:
    """Pipeline stage names from "a,b", in pipeline order whatever order they were given."""
    if not spec:
        return list(PIPELINE)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in PIPELINE]
    if unknown or not wanted:
        raise DeepDistillError(f"unknown stage(s) {', '.join(unknown) or '(none)'}; "
                               f"known: {', '.join(PIPELINE)}")
    return [s for s in PIPELINE if s in wanted]


def inputs_hash(stage: Stage, recipe: Recipe) -> str | None:
    if stage.inputs is None:
        return None
    blob = json.dumps(stage.inputs(recipe), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the runner


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
    run_id = _open_run(store, stage, recipe, params, key)
    run = RunContext(run_id, ctx.emit, ctx.stop)
    ctx.emit(StageStarted(name, run_id))
    summary = _guarded(store, stage, recipe, params, run)
    store.finish_run(run_id, "ok", summary)
    ctx.emit(StageFinished(name, run_id, summary))
    return StageResult(name, run_id, summary)


def _stage(name: str) -> Stage:
    if name not in STAGES:
        raise DeepDistillError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def _open_run(store: Store, stage: Stage, recipe: Recipe | None, params: Any, key: str | None) -> str:
    """A new ``runs`` row, or the unfinished one the stage takes up again (training resumes)."""
    previous = stage.resumes(store, recipe, params) if stage.resumes and recipe else None
    if previous is not None:
        store.resume_run(previous)
        return previous
    args = {k: v for k, v in asdict(params).items() if v is not None}
    if key is not None:
        args["inputs"] = key
    return store.start_run(stage.name, recipe.name if recipe else None,
                           recipe.to_json() if recipe else None, args)


def _guarded(store: Store, stage: Stage, recipe: Recipe | None, params: Any,
             run: RunContext) -> dict[str, Any]:
    """The stage's summary; on any way out but success, the row says how it ended and the face hears."""
    def ended(status: str, error: str, summary: Any = None) -> None:
        store.finish_run(run.run_id, status, summary, error=error)
        run.emit(StageFailed(stage.name, run.run_id, error, stopped=status == "interrupted"))

    try:
        summary = stage.run(store, recipe, params, run)
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
        ended("interrupted", message, summary)
        raise StageStopped(message)
    return summary


def run_pipeline(store: Store, recipe: Recipe, stages: list[str] | None = None, *, force: bool = False,
                 ctx: StageContext | None = None) -> dict[str, StageResult]:
    """The stages in order, each through ``run_stage``; those already done for the same recipe values
    are skipped unless ``force``."""
    return {name: run_stage(store, name, recipe, None, ctx, skip_if_done=not force)
            for name in (stages or PIPELINE)}
