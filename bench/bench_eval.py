"""Evaluation answers/s: the student through the sampler (llama.cpp on its GGUF, continuous batching)
against transformers `generate` (the previous engine, now the fallback), same student, problems, k and
max_tokens, side by side in one run.

    python bench/bench_eval.py                      # 24 problems x k=4, 128 tokens
    python bench/bench_eval.py --problems 12 --k 2 --max-tokens 64

Only generation is timed (grading is the same for both). The student is the tiny recipe's SmolLM2-135M;
the problems are the tiny recipe's held-out split.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.evaluation.evaluate import (
    eval_queries,
    sampler_answers,
    student_model,
    transformers_answers,
)
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    data = load_recipe("tiny").model_dump()
    data["eval"].update({"k": args.k, "max_tokens": args.max_tokens, "limit": args.problems})
    recipe = Recipe.model_validate(data)
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "bench.db") as store:
        ingest(store, recipe.data)
        queries = eval_queries(store, recipe)
        model = student_model(store, recipe, "base")
    n = len(queries) * args.k
    print(f"{len(queries)} problems x k={args.k}, max_tokens {args.max_tokens}, student {model.gguf}")
    times = {}
    engines = (("sampler (llama.cpp)", sampler_answers), ("transformers generate", transformers_answers))
    for name, fn in engines:
        t0 = time.perf_counter()
        answers = fn(recipe, model, queries, lambda e: None, None)
        times[name] = time.perf_counter() - t0
        assert sum(len(a) for a in answers.values()) == n
        print(f"{name}: {n} answers in {times[name]:.1f} s = {n / times[name]:.2f} answers/s")
    print(f"sampler/transformers: {times['transformers generate'] / times['sampler (llama.cpp)']:.2f}x")


if __name__ == "__main__":
    main()
