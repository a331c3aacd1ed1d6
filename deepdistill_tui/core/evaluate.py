"""Evaluation: pass@1 of the student, base or trained, on the held-out split.

pass@1 is averaged over k samples per problem (PAPER.md section 7): for each eval query the student
answers k times (temperature and top-p from the recipe's eval section), the same graders as for teacher
answers score each answer, and a query's pass@1 is its share of passing answers. Results are stored in
``evals`` and shown base against trained, whatever the numbers are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.grade import Grader, Item
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store import Store
from deepdistill_tui.core.text import split_response

Emit = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    pass


def eval_queries(store: Store, recipe: Recipe) -> list[tuple[str, str, str, str | None, str | None]]:
    rows = store.conn.execute(
        "SELECT query_id, category, question, ground_truth, test_cases FROM queries"
        " WHERE split = ? AND category IN ('math', 'code') ORDER BY query_id LIMIT ?",
        (recipe.eval.split, recipe.eval.limit or -1),
    ).fetchall()
    if not rows:
        raise DeepDistillError(f"no math or code queries in split {recipe.eval.split!r} to evaluate on")
    return rows


def trained_adapter(store: Store, run_id: str) -> str:
    run = store.run(run_id)
    if run is None or run["command"] != "train":
        raise DeepDistillError(f"no training run {run_id!r}")
    if run["status"] != "ok":
        raise DeepDistillError(f"training run {run_id} is {run['status']}, not finished")
    return str(run["result"]["output"])


def latest_trained_run(store: Store, recipe: Recipe) -> str | None:
    row = store.conn.execute(
        "SELECT run_id FROM runs WHERE command = 'train' AND status = 'ok' AND recipe_name = ?"
        " ORDER BY finished_at DESC LIMIT 1", (recipe.name,)).fetchone()
    return row[0] if row else None


def load_student(recipe: Recipe, adapter: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepdistill_tui.core.student import student_checkpoint

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


def evaluate(store: Store, recipe: Recipe, model_name: str = "base", *,
             emit: Emit = _noop, stop: threading.Event | None = None) -> dict[str, Any]:
    """pass@1 of the base student or of a training run's adapter; stored in ``evals``.
    ``stop`` ends it between batches; nothing is stored then."""
    import torch

    torch.manual_seed(recipe.seed)
    adapter = None if model_name == "base" else trained_adapter(store, model_name)
    queries = eval_queries(store, recipe)
    model, tok = load_student(recipe, adapter)
    items: list[Item] = []
    start = time.perf_counter()
    for first in range(0, len(queries), GEN_BATCH):
        if stop is not None and stop.is_set():
            raise DeepDistillError(f"evaluation of {model_name} stopped; nothing was stored")
        batch = queries[first : first + GEN_BATCH]
        answers = generate(model, tok, [q[2] for q in batch], recipe)
        for (qid, cat, question, truth, tests), texts in zip(batch, answers, strict=True):
            for i, text in enumerate(texts):
                reasoning, answer = split_response(text)
                items.append(Item((qid, i), cat, question, text, reasoning, answer, truth,
                                  json.loads(tests) if tests else None))
        emit({"event": "eval_progress", "model": model_name, "done": first + len(batch),
              "total": len(queries)})
    # The student is judged on its answers: no format filter (a base model writes no <think>).
    grading = recipe.grading.model_copy(update={"require_reasoning": False})
    passed: dict[str, int] = {}
    with Grader(grading) as grader:
        for item, g in grader.grade(items):
            passed[item.key[0]] = passed.get(item.key[0], 0) + int(g.passed)
    return _store_result(store, recipe, model_name, queries, passed, time.perf_counter() - start)


def _store_result(store: Store, recipe: Recipe, model_name: str, queries: list[Any],
                  passed: dict[str, int], seconds: float) -> dict[str, Any]:
    k = recipe.eval.k
    per_query = {q[0]: passed.get(q[0], 0) / k for q in queries}
    by_cat: dict[str, list[float]] = {}
    for qid, cat, *_ in queries:
        by_cat.setdefault(cat, []).append(per_query[qid])
    result = {"model": model_name, "split": recipe.eval.split, "k": k, "queries": len(queries),
              "pass_at_1": sum(per_query.values()) / len(per_query),
              "by_category": {c: sum(v) / len(v) for c, v in by_cat.items()},
              "seconds": round(seconds, 1)}
    with store.write() as conn:
        conn.execute(
            "INSERT INTO evals (recipe_name, model, split, k, queries, pass_at_1, by_category, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(recipe_name, model, split) DO UPDATE SET"
            " k = excluded.k, queries = excluded.queries, pass_at_1 = excluded.pass_at_1,"
            " by_category = excluded.by_category, created_at = excluded.created_at",
            (recipe.name, model_name, recipe.eval.split, k, len(queries), result["pass_at_1"],
             json.dumps(result["by_category"]), time.time()))
    return result


def comparison(store: Store, recipe: Recipe) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT model, k, queries, pass_at_1, by_category FROM evals WHERE recipe_name = ?"
        " ORDER BY model != 'base', created_at", (recipe.name,)).fetchall()
    return [{"model": m, "k": k, "queries": n, "pass_at_1": p, "by_category": json.loads(c)}
            for m, k, n, p, c in rows]
