"""Math grading with Math-Verify, on the final answer: the last \\boxed{} first.

``verify_math`` runs inside DeadlinePool workers (never in the caller's process): a pathological answer
costs at most the deadline and never hangs the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

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
