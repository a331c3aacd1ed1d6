"""Judges for what code cannot check exactly: LLM rubrics (science, other), IF constraints, and the
format filter that applies to every response (PAPER.md section 3)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from deepdistill_tui.core.backends import Backend

OTHER_RUBRIC = (
    "You are grading an assistant's answer. Rate it on three criteria, each an integer from 0 to 4:\n"
    "coherence, correctness, helpfulness. Reply with exactly three lines:\n"
    "coherence: N\ncorrectness: N\nhelpfulness: N\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n"
)
SCIENCE_RUBRIC = (
    "You are grading an answer against a reference. Rate how well the answer agrees with the reference "
    "from 0 (contradicts or unrelated) to 5 (same conclusion). Reply with one line: score: N\n\n"
    "Question:\n{question}\n\nReference:\n{reference}\n\nAnswer:\n{answer}\n"
)
_LINE = re.compile(r"(coherence|correctness|helpfulness|score)\s*[:=]\s*([0-9](?:\.[0-9]+)?)", re.I)


@dataclass(frozen=True)
class Verdict:
    score: float | None
    status: str
    detail: str


def format_problem(reasoning: str | None, answer: str | None) -> str | None:
    """The paper keeps only responses with both a reasoning part and a final answer."""
    if not reasoning:
        return "no reasoning (<think>...</think>)"
    if not answer:
        return "no final answer after the reasoning"
    return None


def parse_rubric(text: str, category: str) -> float | None:
    found = {k.lower(): float(v) for k, v in _LINE.findall(text)}
    if category == "science":
        return min(found["score"], 5.0) if "score" in found else None
    keys = ("coherence", "correctness", "helpfulness")
    if not all(k in found for k in keys):
        return None
    return sum(min(found[k], 4.0) for k in keys) / 12


def llm_judge(backend: Backend, category: str, question: str, answer: str,
              reference: str | None) -> Verdict:
    if category == "science" and not reference:
        return Verdict(None, "error", "science needs a reference answer")
    template = SCIENCE_RUBRIC if category == "science" else OTHER_RUBRIC
    prompt = template.format(question=question, answer=answer, reference=reference or "")
    reply = backend.generate(prompt, [0])[0].text
    score = parse_rubric(reply, category)
    if score is None:
        return Verdict(None, "error", f"judge reply not in the rubric's format: {reply[:200]!r}")
    return Verdict(score, "ok", f"judge: {' '.join(reply.split())[:300]}")


# ---------------------------------------------------------------- instruction following

def _words(text: str) -> int:
    return len(text.split())


_CHECKS: dict[str, Any] = {
    "max_words": lambda t, v: _words(t) <= int(v),
    "min_words": lambda t, v: _words(t) >= int(v),
    "contains": lambda t, v: str(v).lower() in t.lower(),
    "not_contains": lambda t, v: str(v).lower() not in t.lower(),
    "starts_with": lambda t, v: t.strip().startswith(str(v)),
    "ends_with": lambda t, v: t.strip().endswith(str(v)),
    "lowercase": lambda t, v: t == t.lower(),
    "uppercase": lambda t, v: t == t.upper(),
    "max_sentences": lambda t, v: len([s for s in re.split(r"[.!?]+", t) if s.strip()]) <= int(v),
    "num_paragraphs": lambda t, v: len([p for p in re.split(r"\n\s*\n", t.strip()) if p.strip()]) == int(v),
    "json": lambda t, v: _is_json(t),
}


def _is_json(text: str) -> bool:
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return False
    return True


def check_constraints(answer: str, constraints: Any) -> Verdict:
    """Constraints: a list of {"type": one of the checks, "value": ...}; score = share satisfied."""
    if isinstance(constraints, str):
        constraints = json.loads(constraints)
    if isinstance(constraints, dict):
        constraints = constraints.get("constraints", [constraints])
    if not isinstance(constraints, list) or not constraints:
        return Verdict(None, "error", "no machine-checkable constraints")
    results, notes = [], []
    for c in constraints:
        kind = c.get("type") if isinstance(c, dict) else None
        check = _CHECKS.get(kind)  # type: ignore[arg-type]
        if check is None:
            return Verdict(None, "error", f"unknown constraint type {kind!r}; known: {', '.join(_CHECKS)}")
        ok = bool(check(answer, c.get("value")))
        results.append(ok)
        if not ok:
            notes.append(f"{kind}={c.get('value')!r} not met")
    return Verdict(sum(results) / len(results), "ok", "; ".join(notes) or "all constraints met")
