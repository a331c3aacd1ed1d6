"""Sampling throughput, three ways over the same prompts, seeds and max_tokens, side by side in one run:

- loop: llama-cpp-python's create_completion (create_chat_completion for a chat teacher), one answer at
  a time, on the prompt the sampler sends;
- per-query batch: one query's N passes as one batch (the engine with N sequences, one query in flight);
- continuous: up to S sequences of any queries in flight (S = 16 by default, the CPU setting).

    python bench/bench_sample.py                  # N = 4 and 8 passes, 24 prompts, 128 tokens
    python bench/bench_sample.py --prompts 6 --max-tokens 64 --sequences 32
    python bench/bench_sample.py --recipe small --teacher r1-distill-1.5b --sequences 64 --json out.json

By default all use the tiny recipe's first teacher (the bundled SmolLM2-135M Q4_1 GGUF) and all cores;
--recipe/--teacher take any llama.cpp teacher (on the GPU when its recipe offloads it). Only generated
tokens count, answers that stop early count as they are, so each figure is generated tokens per second
of wall time. The last line is the ratio the sampler issue tracks: `continuous/loop N=4: X.XXx`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from deepdistill_tui.core.recipe import Teacher, load_recipe
from deepdistill_tui.core.teachers.base import (
    COMPLETION_STOP,
    Request,
    chat_messages,
    completion_prompt,
    default_threads,
)
from deepdistill_tui.core.teachers.llama_cpp import LlamaCppBackend
from deepdistill_tui.core.weights.files import fetch

PROMPTS = [
    "What is 23 * 4? Explain your steps.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue? Answer in a paragraph.",
    "Solve for x: 3x + 7 = 22.",
    "List five uses of a paperclip.",
    "Explain what a prime number is to a child.",
    "What is 128 - 39?",
    "Name three planets and one fact about each.",
    "Write a haiku about rain.",
    "How many minutes are in 3.5 hours?",
    "Give two tips for sleeping well.",
    "What is the capital of Australia, and why is it not Sydney?",
]


def loop(teacher: Teacher, model: str, n: int, prompts: list[str]) -> tuple[int, float]:
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=teacher.n_ctx, n_threads=default_threads(), verbose=False,
                n_gpu_layers=teacher.n_gpu_layers, flash_attn=bool(teacher.flash_attn))
    s = teacher.sampling
    tokens, t0 = 0, time.perf_counter()
    knobs: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
                             "top_k": s.top_k}
    for q in prompts:
        for seed in range(n):
            # The prompt the sampler sends: worked examples and a stop for a completion teacher.
            out: Any
            if teacher.template == "completion":
                out = llm.create_completion(completion_prompt(teacher, q), stop=[COMPLETION_STOP],
                                            seed=seed, **knobs)
            else:
                out = llm.create_chat_completion(chat_messages(teacher, q), seed=seed,  # type: ignore[arg-type]
                                                 **knobs)
            tokens += out["usage"]["completion_tokens"]
    dt = time.perf_counter() - t0
    llm.close()
    return tokens, dt


def engine(teacher: Teacher, model: str, n: int, prompts: list[str], sequences: int) -> tuple[int, float]:
    backend = LlamaCppBackend(teacher, Path(model), max_seqs=sequences, passes=n)
    requests = [Request(i, q, [1000 * i + p for p in range(n)]) for i, q in enumerate(prompts)]
    tokens, t0 = 0, time.perf_counter()
    for _, outs in backend.generate_many(requests):
        assert not isinstance(outs, Exception)
        tokens += sum(c.completion_tokens for c in outs)
    dt = time.perf_counter() - t0
    backend.close()
    return tokens, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--passes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--teacher", help="a llama.cpp teacher of the recipe (default: its first)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    base = recipe.teacher(args.teacher) if args.teacher else recipe.teachers[0]
    teacher = base.model_copy(update={
        "sampling": base.sampling.model_copy(update={"max_tokens": args.max_tokens}),
        "n_ctx": max(1024, args.max_tokens + 512)})
    model = str(fetch(teacher.model))  # type: ignore[arg-type]
    # More prompts than the list: the same questions asked again in other words (no prompt cache hit).
    prompts = [q if i < len(PROMPTS) else f"Once more, in other words: {q}"
               for i, q in enumerate(PROMPTS * (args.prompts // len(PROMPTS) + 1))][: args.prompts]
    print(f"model {model}\nthreads {default_threads()}, max_tokens {args.max_tokens}, "
          f"{len(prompts)} prompts")
    ratios, figures = {}, []
    for n in args.passes:
        lt, ls = loop(teacher, model, n, prompts)
        bt, bs = engine(teacher, model, n, prompts, sequences=n)
        ct, cs = engine(teacher, model, n, prompts, sequences=max(n, args.sequences))
        loop_rate = lt / ls
        ratios[n] = ct / cs / loop_rate
        figures.append({"passes": n, "loop_tok_s": loop_rate, "per_query_tok_s": bt / bs,
                        "continuous_tok_s": ct / cs, "sequences": max(n, args.sequences),
                        "continuous_over_loop": ratios[n]})
        print(f"N={n}: loop {lt} tok in {ls:.1f} s = {loop_rate:.0f} tok/s | per-query batch {bt} tok "
              f"in {bs:.1f} s = {bt / bs:.0f} tok/s ({bt / bs / loop_rate:.2f}x) | continuous S="
              f"{max(n, args.sequences)} {ct} tok in {cs:.1f} s = {ct / cs:.0f} tok/s ({ratios[n]:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": teacher.name, "model": model,
                                               "max_tokens": args.max_tokens, "prompts": len(prompts),
                                               "runs": figures}, indent=2))
    for n, ratio in sorted(ratios.items(), reverse=True):  # N=4 last: the line the issue tracks
        print(f"continuous/loop N={n}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
