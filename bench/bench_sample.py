"""Batched passes vs a plain loop of create_chat_completion, same prompts and max_tokens, one run.

    python bench/bench_sample.py                  # N = 4 and 8 passes, 6 prompts, 128 tokens
    python bench/bench_sample.py --prompts 3 --max-tokens 64

Both sides use the bundled SmolLM2-135M Q4_1 GGUF and all cores; only the generated tokens count.
Answers that stop early (end of sequence) count as they are on both sides, so the figure is
generated tokens per second of wall time.
"""

from __future__ import annotations

import argparse
import time

from deepdistill_tui.core.backends import LlamaCppBackend, chat_messages, default_threads
from deepdistill_tui.core.models import fetch
from deepdistill_tui.core.recipe import Teacher, load_recipe

PROMPTS = [
    "What is 23 * 4? Explain your steps.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue? Answer in a paragraph.",
    "Solve for x: 3x + 7 = 22.",
    "List five uses of a paperclip.",
    "Explain what a prime number is to a child.",
]


def loop(teacher: Teacher, model: str, n: int, prompts: list[str]) -> tuple[int, float]:
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=teacher.n_ctx, n_threads=default_threads(), verbose=False)
    s = teacher.sampling
    tokens, t0 = 0, time.perf_counter()
    for q in prompts:
        for seed in range(n):
            out = llm.create_chat_completion(chat_messages(teacher, q), max_tokens=s.max_tokens,  # type: ignore[arg-type]
                                             temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                             seed=seed)
            tokens += out["usage"]["completion_tokens"]  # type: ignore[index]
    dt = time.perf_counter() - t0
    llm.close()
    return tokens, dt


def batched(teacher: Teacher, model: str, n: int, prompts: list[str]) -> tuple[int, float]:
    from pathlib import Path

    backend = LlamaCppBackend(teacher, Path(model), max_seqs=n)
    tokens, t0 = 0, time.perf_counter()
    for q in prompts:
        tokens += sum(c.completion_tokens for c in backend.generate(q, list(range(n))))
    dt = time.perf_counter() - t0
    backend.close()
    return tokens, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--passes", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args()
    base = load_recipe("tiny").teachers[0]
    teacher = base.model_copy(update={
        "sampling": base.sampling.model_copy(update={"max_tokens": args.max_tokens}), "n_ctx": 1024})
    model = str(fetch(teacher.model))  # type: ignore[arg-type]
    prompts = PROMPTS[: args.prompts]
    print(f"model {model}\nthreads {default_threads()}, max_tokens {args.max_tokens}, "
          f"{len(prompts)} prompts")
    for n in args.passes:
        lt, ls = loop(teacher, model, n, prompts)
        bt, bs = batched(teacher, model, n, prompts)
        print(f"N={n}: loop {lt} tok in {ls:.1f} s = {lt / ls:.0f} tok/s | batched {bt} tok in "
              f"{bs:.1f} s = {bt / bs:.0f} tok/s | ratio {bt / bs / (lt / ls):.2f}x")


if __name__ == "__main__":
    main()
