"""The stages: each one's name, params type, adapter and rules for ``run`` (the registry).

Each stage's work lives in its own module (ingest, sample, grade, select, train, evaluate, export);
the adapters below only translate params into that module's call, imported when the stage runs, so
that the door loads no engine.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepdistill_tui.core.errors import DeepDistillError, InputError, StageError
from deepdistill_tui.core.pipeline.context import Result, RunContext
from deepdistill_tui.core.pipeline.events import StageProgress
from deepdistill_tui.core.pipeline.params import (
    AblateParams,
    EvalParams,
    ExportParams,
    GradeParams,
    ImportParams,
    IngestParams,
    SampleParams,
    SelectParams,
    TrainParams,
)
from deepdistill_tui.core.recipe import Recipe, resolve_data_path
from deepdistill_tui.core.store.database import Store

if TYPE_CHECKING:  # the adapters import the stages' modules when they run, not before
    from deepdistill_tui.core.data.released import ImportReport
    from deepdistill_tui.core.difficulty.quality import Arrivals, Arrived


def am_sources(recipe: Recipe) -> list[tuple[list[Path], int | None]]:
    """Each ``format: am`` source of the recipe: the files its glob matches, and its row limit."""
    out = []
    for src in recipe.data.sources:
        if src.format != "am":
            continue
        pattern = str(resolve_data_path(src.path)) if not Path(src.path).is_absolute() else src.path
        matched = sorted(Path(p) for p in glob.glob(pattern))
        if not matched:
            raise InputError(f"recipe {recipe.name}: data.sources: no AM files match {src.path}")
        out.append((matched, src.limit))
    return out


def _ingest(store: Store, recipe: Recipe, p: IngestParams, run: RunContext) -> Result:
    from deepdistill_tui.core.data.ingest import IngestResult, ingest
    from deepdistill_tui.core.data.released import import_am

    queries = None
    if any(s.format != "am" for s in recipe.data.sources):
        run.emit(StageProgress("ingest", "reading sources"))
        queries = ingest(store, recipe.data, seed=recipe.seed)
    released = None
    for files, limit in am_sources(recipe):
        run.emit(StageProgress("ingest", f"importing {len(files)} AM files"
                                         + (f", the first {limit} rows of each" if limit else "")))
        report = _counted_import(store, recipe, partial(
            import_am, store, files, thresholds=dict(recipe.grading.thresholds), limit=limit))
        released = report if released is None else _merged(released, report)
    return IngestResult(queries, released)


def _merged(a: ImportReport, b: ImportReport) -> ImportReport:
    """Two sources' reports as one (the recipe's AM sources are one step of ingest)."""
    from dataclasses import replace

    return replace(a, files=a.files + b.files, responses=a.responses + b.responses,
                   new_queries=a.new_queries + b.new_queries, duplicates=a.duplicates + b.duplicates,
                   rows=a.rows + b.rows, already_imported=a.already_imported + b.already_imported,
                   resumed=a.resumed + b.resumed, skipped=a.skipped + b.skipped,
                   examples=(a.examples + b.examples)[:20], per_file={**a.per_file, **b.per_file},
                   duplicates_per_file={**a.duplicates_per_file, **b.duplicates_per_file},
                   formats={**a.formats, **b.formats}, teachers=a.teachers | b.teachers,
                   seconds=a.seconds + b.seconds, staged=a.staged + b.staged,
                   texts_exact=a.texts_exact and b.texts_exact,
                   versions_before={**b.versions_before, **a.versions_before})


def _import(store: Store, recipe: Recipe | None, p: ImportParams, run: RunContext) -> Result:
    from deepdistill_tui.core.data.ingest import IngestResult
    from deepdistill_tui.core.data.released import import_released

    thresholds = dict(recipe.grading.thresholds) if recipe else None
    return IngestResult(import_am=_counted_import(store, recipe, partial(
        import_released, store, list(p.files), fmt=p.format, columns=dict(p.columns),
        category=p.category, teacher=p.teacher, thresholds=thresholds, strict=p.strict, workers=p.workers)))


def _import_am(store: Store, recipe: Recipe | None, p: ImportParams, run: RunContext) -> Result:
    from deepdistill_tui.core.data.ingest import IngestResult
    from deepdistill_tui.core.data.released import import_am

    thresholds = dict(recipe.grading.thresholds) if recipe else None
    return IngestResult(import_am=_counted_import(store, recipe, partial(
        import_am, store, list(p.files), thresholds=thresholds, strict=p.strict, workers=p.workers)))


def _counted_import(store: Store, recipe: Recipe | None,
                    call: Callable[..., ImportReport]) -> ImportReport:
    """One import whose responses the quality filters count as it parses them, then the reads
    prepared for the teachers that got rows. ``call`` runs the import given ``on_samples=``, the
    counting callback (None when the recipe's filters are off)."""
    from deepdistill_tui.core.difficulty.quality import Arrivals
    from deepdistill_tui.core.recipe import QualityFilters

    arrivals = Arrivals.for_filters(store, recipe.selection.quality if recipe else QualityFilters())
    report = call(on_samples=arrivals)
    prepare_reads(store, recipe, report.teachers, _added(arrivals, report))
    return report


def _added(arrivals: Arrivals | None, report: ImportReport) -> dict[str, Arrived]:
    """What the import counted per teacher, when it counted exactly the responses it added."""
    if arrivals is None or not report.texts_exact:
        return {}
    for tid, arrived in arrivals.by_teacher.items():
        arrived.version_before = report.versions_before.get(tid, 0)
    return dict(arrivals.by_teacher)


def prepare_reads(store: Store, recipe: Recipe | None, teachers: set[str],
                  added: dict[str, Arrived] | None = None) -> None:
    """After responses arrive: the score summaries (for the recipe's thresholds, else the paper's) and
    the quality filters of each teacher that got them, computed now so that no read has to.
    ``added``: per teacher, the filters' counts of exactly the responses that arrived."""
    from deepdistill_tui.core.difficulty import summaries
    from deepdistill_tui.core.difficulty.quality import flags_fresh, refresh_flags
    from deepdistill_tui.core.recipe import PAPER_PASS_THRESHOLDS, QualityFilters

    cuts = summaries.recipe_cuts(recipe) if recipe else sorted(set(PAPER_PASS_THRESHOLDS.values()))
    summaries.ensure(store, cuts)
    for tid in sorted(teachers):
        cfg = recipe.selection.quality if recipe else QualityFilters()
        if not flags_fresh(store, cfg, tid):  # nothing new (a file imported before): nothing to do
            refresh_flags(store, cfg, tid, (added or {}).get(tid))


def _sample(store: Store, recipe: Recipe, p: SampleParams, run: RunContext) -> Result:
    from deepdistill_tui.core.teachers.sample import SampleResult, sample

    result = SampleResult(sample(store, recipe, teacher_name=p.teacher, limit=p.limit, emit=run.emit,
                                 stop=run.stop))
    # The training teacher's new responses change its quality filters: worked out now, as they
    # arrive, so that the next statistics or selection reads them instead of every text.
    trained = {r.teacher_id for r in result.reports
               if r.samples and r.teacher_id and r.teacher == recipe.selection.training_teacher}
    prepare_reads(store, recipe, trained)
    if result.errors:
        raise StageError("; ".join(result.errors), result.summary())
    return result


def _grade(store: Store, recipe: Recipe, p: GradeParams, run: RunContext) -> Result:
    from deepdistill_tui.core.grading.stage import grade_store

    return grade_store(store, recipe, emit=run.emit, stop=run.stop, workers=p.workers)


def _select(store: Store, recipe: Recipe, p: SelectParams, run: RunContext) -> Result:
    from deepdistill_tui.core.difficulty.selection import SelectResult, run_selection

    name = recipe.name if p.name is None else p.name
    return SelectResult(run_selection(store, recipe, name))


def _train(store: Store, recipe: Recipe, p: TrainParams, run: RunContext) -> Result:
    from deepdistill_tui.core.train import train

    return train(store, recipe, _selection(recipe, p), run_id=run.run_id,
                 runs_dir=Path(p.runs_dir) if p.runs_dir else None, emit=run.emit, stop=run.stop)


def _resumable_train(store: Store, recipe: Recipe, p: TrainParams) -> str | None:
    from deepdistill_tui.core.train import resumable_run

    return None if p.fresh else resumable_run(store, recipe, _selection(recipe, p))


def _selection(recipe: Recipe, p: TrainParams) -> str:
    return recipe.name if p.selection is None else p.selection


def _eval(store: Store, recipe: Recipe, p: EvalParams, run: RunContext) -> Result:
    from deepdistill_tui.core.evaluation.evaluate import EvalResult, comparison, evaluate

    evaluated = [evaluate(store, recipe, model, emit=run.emit, stop=run.stop)
                 for model in _models_to_evaluate(store, recipe, p.model)]
    return EvalResult(evaluated, comparison(store, recipe))


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


def _export(store: Store, recipe: Recipe, p: ExportParams, run: RunContext) -> Result:
    from deepdistill_tui.core.difficulty.export import ExportResult, export

    return ExportResult(export(store, recipe, p.selection, p.format, p.out), p.selection, p.format, p.out)


def _ablate(store: Store, recipe: Recipe, p: AblateParams, run: RunContext) -> Result:
    from deepdistill_tui.core.evaluation.ablate import AblateResult, ablate, contrasts, parse_arms

    rows = ablate(store, recipe, parse_arms(",".join(p.arms)), run)
    return AblateResult(rows, contrasts(store, recipe, rows))


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    params: type
    run: Callable[[Store, Any, Any, RunContext], Result]
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
    Stage("import", "released responses (AM, its siblings, generations) into the store", ImportParams,
          _import, in_pipeline=False, needs_recipe=False),
    Stage("import-am", "AM-DeepSeek-Distilled-40M files into the store", ImportParams, _import_am,
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


