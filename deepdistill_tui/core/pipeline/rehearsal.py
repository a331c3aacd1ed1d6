"""A rehearsal: the recipe's own stages, configuration and code paths with every count capped, in a
store of its own, then a plan of what the full run will cost at the throughput it measured here.

A user checks a recipe in minutes before spending a night on it: a template that does not parse, a
grader that times out, a student that does not fit or an export that fails shows up in the rehearsal,
and the plan says how many tokens, steps, checkpoints, gigabytes and hours the real run needs on this
machine. Ingest is not capped (it is cheap, and the plan needs the real number of queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.pipeline.context import StageContext
from deepdistill_tui.core.pipeline.registry import PIPELINE
from deepdistill_tui.core.pipeline.runner import run_pipeline
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store

CAPS = {"queries": 8, "passes": 2, "max_tokens": 256, "steps": 4, "max_length": 512, "eval_problems": 8}
"""What a rehearsal does at most: training queries sampled, passes, tokens an answer, optimizer steps,
training sequence length, held-out problems (answered once each)."""
CAPPED_SHARE = 0.2
"""When more rehearsal answers than this stopped at the cap, their length says little about the full
run's: the plan then counts every answer at the recipe's max_tokens (an upper bound) and says so."""


def rehearsal_recipe(recipe: Recipe) -> Recipe:
    """The recipe with every count capped (CAPS); everything else (templates, graders, thresholds,
    selection rules, the student, method, packing, save_steps as a share) as it is."""
    data = recipe.model_dump(mode="json")
    sampling = data["sampling"]
    sampling["query_limit"] = min(sampling.get("query_limit") or CAPS["queries"], CAPS["queries"])
    sampling["passes"] = min(sampling["passes"], CAPS["passes"])
    for teacher in data["teachers"]:
        params = teacher.get("sampling")
        if isinstance(params, dict) and "max_tokens" in params:
            params["max_tokens"] = min(params["max_tokens"], CAPS["max_tokens"])
    training = data["training"]
    training["max_steps"] = min(training.get("max_steps") or CAPS["steps"], CAPS["steps"])
    training["max_length"] = min(training["max_length"], CAPS["max_length"])
    if training["save_steps"] >= 1:  # a whole number of steps: one checkpoint mid-rehearsal
        training["save_steps"] = max(1, training["max_steps"] // 2)
    data["eval"].update(limit=min(data["eval"].get("limit") or CAPS["eval_problems"], CAPS["eval_problems"]),
                        k=1, max_tokens=min(data["eval"]["max_tokens"], CAPS["max_tokens"]))
    return Recipe.model_validate(data)


def rehearsal_store(db: Path) -> Path:
    """Where a rehearsal of the store at ``db`` keeps its own data: beside it, never in it."""
    return db.with_name(f"{db.stem}.rehearsal{db.suffix or '.db'}")


@dataclass
class Plan:
    """What the full run will do, from the rehearsal's measurements and the full recipe."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    """(what, figure) in pipeline order."""
    notes: list[str] = field(default_factory=list)
    hours: float = 0.0

    def add(self, what: str, figure: str) -> None:
        self.lines.append((what, figure))


def rehearse_beside(db: Path, recipe: Recipe, ctx: StageContext, stand_ins: bool) -> tuple[Path, Plan]:
    """A rehearsal in a fresh store beside ``db`` (stand-ins, when asked, in a folder beside it): what
    the CLI's ``run --rehearse`` and the app's rehearse key both do. Returns (its store, the plan)."""
    store_path = rehearsal_store(db)
    for leftover in (store_path, store_path.with_name(store_path.name + "-wal"),
                     store_path.with_name(store_path.name + "-shm")):
        leftover.unlink(missing_ok=True)  # a rehearsal starts from nothing, every time
    folder = store_path.with_name(f"{store_path.stem}-stand-ins") if stand_ins else None
    with Store(store_path) as store:
        return store_path, rehearse(store, recipe, ctx, folder)


def rehearse(store: Store, recipe: Recipe, ctx: StageContext, stand_ins: Path | None = None) -> Plan:
    """Run every stage of the capped recipe, then plan the full run from what it measured. With
    ``stand_ins`` (a folder), what this machine cannot have is replaced first (core/pipeline/standins.py)."""
    if stand_ins is not None:
        from deepdistill_tui.core.pipeline.standins import stand_in_recipe

        recipe = stand_in_recipe(recipe, stand_ins)
    capped = rehearsal_recipe(recipe)
    first = PIPELINE[: PIPELINE.index("select") + 1]
    run_pipeline(store, capped, first, force=True, ctx=ctx)
    p = Plan()
    _train_on_something(store, capped, p)
    _train_stopped_and_resumed(store, capped, ctx, p)
    run_pipeline(store, capped, [s for s in PIPELINE[len(first):] if s != "train"], force=True, ctx=ctx)
    p = plan(store, recipe, capped, p)
    if stand_ins is not None:
        p.notes.append("with stand-ins the counts are the stand-ins' (small local sources) and the rates "
                       "those of stand-in models on this machine: the plan has the run's shape, not its size")
    return p


def _train_on_something(store: Store, capped: Recipe, p: Plan) -> None:
    """A handful of capped answers may all fail their grade, and then the selection keeps nothing: the
    rehearsal still trains (that is what it checks), on every graded answer of the training teacher,
    and the plan says so."""
    from deepdistill_tui.core.difficulty.responses import resolve_teachers
    from deepdistill_tui.core.difficulty.selection import Selection, rule_of, save_selections

    name = capped.name
    if store.scalar("SELECT n_members FROM selections WHERE name = ?", (name,)):
        return
    teacher = capped.selection.training_teacher
    tid = resolve_teachers(store, [teacher]).get(teacher)
    members = [(q, t, int(i), 1) for q, t, i in store.conn.execute(
        "SELECT g.query_id, g.teacher_id, g.pass_index FROM grades g JOIN queries q USING (query_id)"
        " WHERE g.teacher_id = ? AND q.split = 'train' ORDER BY g.query_id, g.pass_index", (tid,))]
    save_selections(store, [Selection(name, rule_of(capped, stage=1), capped.selection.seed,
                                      {"rehearsal": "every graded answer"}, members)])
    p.notes.append(f"the rehearsal's selection kept nothing (its {len(members)} capped answers from "
                   f"{teacher} did not pass): it trained on all of them to check the training path")


def _train_stopped_and_resumed(store: Store, capped: Recipe, ctx: StageContext, p: Plan) -> None:
    """Training stopped at its first checkpoint, as a kill would stop it, then taken up again: the
    rehearsal checks that a night's run can resume, not only that it can start."""
    import threading

    from deepdistill_tui.core.errors import StageStopped
    from deepdistill_tui.core.pipeline.events import Event, TrainCheckpoint
    from deepdistill_tui.core.pipeline.runner import run_stage

    stop = threading.Event()

    def emit(event: Event) -> None:
        ctx.emit(event)
        if isinstance(event, TrainCheckpoint) or ctx.stop.is_set():  # ours, or the person's stop
            stop.set()

    try:
        run_stage(store, "train", capped, None, StageContext(emit, stop, face=ctx.face))
    except StageStopped:
        if ctx.stop.is_set():
            raise  # the person stopped the rehearsal: it ends here
        run_stage(store, "train", capped, None, ctx)
        p.notes.append("training was stopped at its first checkpoint and resumed from it")
        return
    p.notes.append("training ended before the stop at its first checkpoint took effect: resume not checked")


def plan(store: Store, recipe: Recipe, capped: Recipe, p: Plan | None = None) -> Plan:
    p = p or Plan()
    seconds = _stage_seconds(store)
    train_queries = store.scalar("SELECT count(*) FROM queries WHERE split = 'train'") or 0
    eval_queries = store.scalar("SELECT count(*) FROM queries WHERE split = ?", (recipe.eval.split,)) or 0
    sampled = min(train_queries, recipe.sampling.query_limit or train_queries)
    passes = recipe.sampling.passes
    teachers = recipe.sampled_teachers()
    p.add("training queries", f"{sampled:,} of {train_queries:,} (held out: {eval_queries:,})")
    responses = sampled * passes * len(teachers)
    tokens = _planned_tokens(store, recipe, capped, sampled * passes, p)
    rate = _rate(store.scalar("SELECT sum(completion_tokens) FROM samples"), seconds.get("sample"))
    p.add("tokens to sample", ", ".join(f"{name} {n:,}" for name, n in tokens.items()))
    _timed(p, "sampling", sum(tokens.values()), rate, "tokens/s")
    graded = store.scalar("SELECT count(*) FROM grades") or 0
    _timed(p, "grading", responses, _rate(graded, seconds.get("grade")), "responses/s",
           what=f"{responses:,} responses")
    steps = _planned_steps(store, recipe, capped, sampled, p)
    trained_steps = _steps_done(store)
    _timed(p, "training", steps, _rate(trained_steps, seconds.get("train")), "steps/s",
           what=f"{steps:,} optimizer steps")
    p.add("checkpoints", _checkpoints(recipe, steps))
    answers = (min(eval_queries, recipe.eval.limit or eval_queries)) * recipe.eval.k * 2  # base and student
    answered, answering = _answered(store)
    _timed(p, "evaluation", answers, _rate(answered, answering), "answers/s",
           what=f"{answers:,} answers (base and student, k={recipe.eval.k})")
    p.add("disk", _disk(store, responses))
    p.add("total", f"about {p.hours:,.1f} hours on this machine")
    return p


def _stage_seconds(store: Store) -> dict[str, float]:
    rows = store.conn.execute("SELECT command, sum(finished_at - started_at) FROM runs WHERE status = 'ok'"
                              " GROUP BY command").fetchall()
    return {str(c): float(s) for c, s in rows if s}


def _rate(amount: Any, seconds: float | None) -> float | None:
    return float(amount) / seconds if amount and seconds else None


def _timed(p: Plan, stage: str, amount: float, rate: float | None, unit: str, what: str = "") -> None:
    if rate is None:
        p.add(stage, f"{what or f'{amount:,.0f}'}; no rate measured (the stage did no work here)")
        return
    hours = amount / rate / 3600
    p.hours += hours
    p.add(stage, f"{what + ': ' if what else ''}{hours:,.2f} h at {rate:,.2f} {unit} (measured)")


def _planned_tokens(store: Store, recipe: Recipe, capped: Recipe, answers: int, p: Plan) -> dict[str, int]:
    """Tokens each sampled teacher will generate: its measured mean answer, or its max_tokens where the
    rehearsal's cap cut too many answers short for the mean to mean anything."""
    out: dict[str, int] = {}
    full = {t.name: t for t in recipe.teachers}
    for teacher in capped.sampled_teachers():
        mean, capped_share = store.conn.execute(
            "SELECT avg(completion_tokens), avg(finish_reason = 'length') FROM samples s"
            " JOIN teachers t ON t.teacher_id = s.teacher_id WHERE t.name = ?", (teacher.name,)).fetchone()
        limit = getattr(getattr(full[teacher.name], "sampling", None), "max_tokens", None)
        if mean is None or (capped_share or 0) > CAPPED_SHARE:
            per = limit or CAPS["max_tokens"]
            p.notes.append(f"{teacher.name}: {100 * (capped_share or 0):.0f}% of the rehearsal's answers "
                           f"stopped at its {CAPS['max_tokens']}-token cap; counted at max_tokens {per:,}")
        else:
            per = float(mean)
        out[teacher.name] = round(per * answers)
    return out


def _planned_steps(store: Store, recipe: Recipe, capped: Recipe, queries: int, p: Plan) -> int:
    """Optimizer steps of the full run: the recipe's max_steps, else the selection's share of the
    rehearsal's responses scaled to the full run, through packing or one example a row."""
    t = recipe.training
    if t.max_steps:
        return t.max_steps
    kept, tokens = store.conn.execute(
        "SELECT coalesce(sum(n_members), 0), coalesce(sum(n_tokens), 0) FROM selections").fetchone()
    rehearsed = max(capped.sampling.query_limit or 1, 1)
    scale = queries / rehearsed * recipe.sampling.passes / capped.sampling.passes
    rows = tokens * scale / t.max_length if t.packing else kept * scale
    steps = max(1, math.ceil(rows * t.epochs / (t.micro_batch * t.grad_accum)))
    p.notes.append(f"steps from the rehearsal's selection ({kept} responses, {tokens:,} tokens of "
                   f"{rehearsed} queries) scaled to {queries:,} queries")
    return steps


def _answered(store: Store) -> tuple[int, float]:
    """(answers, seconds spent answering) over the rehearsal's evaluations."""
    answers, seconds = 0, 0.0
    for run in store.runs("eval", statuses=("ok",)):
        for model in (run.get("result") or {}).get("evaluated", []):
            answers += int(model.get("problems", 0)) * int(model.get("k", 1))
            seconds += float(model.get("seconds") or 0)
    return answers, seconds


def _steps_done(store: Store) -> int:
    return int(store.scalar("SELECT coalesce(sum(json_extract(result, '$.steps')), 0) FROM runs"
                            " WHERE command = 'train' AND status = 'ok'") or 0)


def _checkpoints(recipe: Recipe, steps: int) -> str:
    every = recipe.training.save_steps
    count = math.floor(1 / every) if every < 1 else steps // int(every)
    return f"{count} (save_steps {every:g})"


def _disk(store: Store, responses: int) -> str:
    per = store.scalar("SELECT avg(length(response) + coalesce(length(reasoning), 0)) FROM samples") or 0
    run_dirs = [Path(r) for (r,) in store.conn.execute(
        "SELECT json_extract(args, '$.run_dir') FROM runs WHERE command = 'train'") if r]
    trained = sum(f.stat().st_size for d in run_dirs if d.is_dir() for f in d.rglob("*") if f.is_file())
    return (f"{_size(responses * per * 2)} of responses in the store (text and index), "
            f"{_size(trained)} per training run folder as the rehearsal wrote it")


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1e3:,.0f} kB"


def render(p: Plan) -> list[str]:
    width = max((len(w) for w, _ in p.lines), default=0)
    return [f"{what:<{width}}  {figure}" for what, figure in p.lines] + [f"note: {n}" for n in p.notes]
