"""Math grading with Math-Verify, on the final answer: the last \\boxed{} first.

``verify_math`` runs inside DeadlinePool workers (never in the caller's process): a pathological answer
costs at most the deadline and never hangs the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from typing import Any

from deepdistill_tui.core.grading.base import GraderKind, GradingEnv, Item, Scored, Verdict
from deepdistill_tui.core.grading.pool import DeadlinePool

GRADER = "math-verify"


@dataclass(frozen=True)
class MathItem:
    answer: str
    ground_truth: str
    timeout_s: int = 2
    """Math-Verify's own (SIGALRM) timeouts; the pool's hard deadline stands behind them."""


def boxed_contents(text: str) -> list[str]:
    """The contents of every \\boxed{...} / \\fbox{...}, braces balanced, in order."""
    out = []
    for marker in ("\\boxed{", "\\fbox{"):
        start = 0
        while (i := text.find(marker, start)) != -1:
            depth, j = 1, i + len(marker)
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth == 0:
                out.append((i, text[i + len(marker) : j - 1].strip()))
            start = j
    return [c for _, c in sorted(out)]


def final_answer(answer: str) -> tuple[str | None, str]:
    """(answer to verify, why not). Several *different* boxed answers earn nothing: hedging is wrong."""
    boxed = boxed_contents(answer)
    distinct = {" ".join(b.split()) for b in boxed}
    if len(distinct) > 1:
        return None, f"{len(distinct)} different boxed answers"
    if boxed:
        return f"${boxed[-1]}$", ""
    return (answer.strip() or None), "no \\boxed{}" if answer.strip() else "empty answer"


@lru_cache(maxsize=4096)
def _parse_gold(ground_truth: str, timeout_s: int) -> Any:
    """A query's reference is parsed once per worker, not once per response (n passes x teachers)."""
    from math_verify import parse

    return parse(f"${ground_truth}$", parsing_timeout=timeout_s)


def warm_up() -> None:
    """What a worker does before its first item: Math-Verify's imports (sympy, the LaTeX grammar) and
    one parse, seconds that must not count against an item's deadline."""
    from math_verify import parse, verify

    verify(parse("$1$"), parse("$1$"))


def verify_math(item: MathItem) -> dict[str, Any]:
    """Worker entry point: {'score': 0 or 1, 'status': ..., 'detail': ...}."""
    from math_verify import parse, verify

    pred_text, why = final_answer(item.answer)
    if pred_text is None:
        return {"score": 0.0, "status": "wrong_format", "detail": why}
    t = max(1, item.timeout_s)
    gold = _parse_gold(item.ground_truth, t)
    if not gold:
        return {"score": None, "status": "error", "detail": f"unparseable ground truth {item.ground_truth!r}"}
    pred = parse(pred_text, parsing_timeout=t)
    if not pred:
        return {"score": 0.0, "status": "ok", "detail": f"unparseable answer {pred_text[:80]!r}"}
    ok = verify(gold, pred, timeout_seconds=t)
    return {"score": 1.0 if ok else 0.0, "status": "ok", "detail": f"answer {pred_text[:200]!r}"}


class MathVerify(GraderKind):
    """Final answers against the reference with Math-Verify, in worker processes killed at a deadline."""

    name = "math"

    def __init__(self, env: GradingEnv) -> None:
        super().__init__(env)
        self._pool: DeadlinePool | None = None

    def version(self) -> str:
        return f"math-verify {version('math-verify')}"

    def grade(self, items: list[Item]) -> Iterator[Scored]:
        todo = [i for i in items if i.ground_truth]
        for item in items:
            if not item.ground_truth:
                yield Scored(item, Verdict(None, "error", "no ground truth"), 0.0)
        if not todo:
            return
        timeout_s = self.env.cfg.math_timeout_s
        if self._pool is None:
            self._pool = DeadlinePool(verify_math, self.env.workers, timeout_s, warmup=warm_up)
        tasks = [MathItem(i.answer or i.response, str(i.ground_truth), max(1, int(timeout_s) - 1))
                 for i in todo]
        t0 = time.perf_counter()
        for index, status, value in self._pool.imap(tasks):
            if status == "ok":
                v = Verdict(value["score"], value["status"], value["detail"])
            elif status == "timeout":
                v = Verdict(0.0, "timeout", f"no verdict within {timeout_s:g} s")
            else:
                v = Verdict(None, "error", str(value))
            yield Scored(todo[index], v, time.perf_counter() - t0)
            t0 = time.perf_counter()

    def close(self) -> None:
        if self._pool:
            self._pool.close()
            self._pool = None
