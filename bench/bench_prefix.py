"""Sampling with the template's prefix decoded once and shared by every query, against decoding each
query's whole prompt: the tiny recipe's teacher (its worked examples are ~170 tokens of every prompt),
the same questions, seeds and max_tokens, side by side in one run.

    python bench/bench_prefix.py                  # 48 questions x 4 passes, max_tokens 48
    python bench/bench_prefix.py --questions 24 --max-tokens 32
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.teachers import llama_cpp as backends
from deepdistill_tui.core.weights.files import fetch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from make_demo import math_problem


def run(questions: list[str], max_tokens: int, share: bool) -> tuple[float, int, int]:
    """(answers per second, generated tokens, prompt tokens decoded)."""
    teacher = load_recipe("tiny").teachers[0]
    teacher = teacher.model_copy(update={"sampling": teacher.sampling.model_copy(
        update={"max_tokens": max_tokens})})
    backends.MIN_SHARED_PREFIX = 8 if share else 10**9
    engine = backends.LlamaCppBackend(teacher, fetch(teacher.model), max_seqs=16, passes=4)  # type: ignore[arg-type]
    start, tokens = time.perf_counter(), 0
    try:
        for _, outs in engine.generate_many(backends.Request(i, q, [10 * i + p for p in range(4)])
                                            for i, q in enumerate(questions)):
            tokens += sum(c.completion_tokens for c in outs)  # type: ignore[union-attr]
        return len(questions) * 4 / (time.perf_counter() - start), tokens, engine.prompt_tokens_decoded
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    rng = random.Random(11)
    questions = [math_problem(rng, 1 + i % 6)[0] for i in range(args.questions)]
    alone = run(questions, args.max_tokens, share=False)
    shared = run(questions, args.max_tokens, share=True)
    for name, (rate, tokens, prompt) in (("whole prompts", alone), ("shared prefix", shared)):
        print(f"{name}: {rate:.2f} answers/s, {tokens} tokens generated, {prompt} prompt tokens decoded")
    print(f"shared/whole: {shared[0] / alone[0]:.2f}x")


if __name__ == "__main__":
    main()
