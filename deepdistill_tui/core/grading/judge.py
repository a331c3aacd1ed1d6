"""Judges for what code cannot check exactly: LLM rubrics (science, other), IF constraints, and the
format filter that applies to every response (PAPER.md section 3)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from deepdistill_tui.core.teachers.backends import Backend

OTHER_RUBRIC = (
    "You are grading an assistant's answer. Rate it on three criteria, each an integer from 0 to 4: "
    "coherence, correctness, helpfulness. Reply with JSON only: "
    '{{"coherence": N, "correctness": N, "helpfulness": N}}\n\n'
    "Question:\n{question}\n\nAnswer:\n{answer}\n"
)
SCIENCE_RUBRIC = (
    "You are grading an answer against a reference. Rate how well the answer agrees with the reference "
    "from 0 (contradicts or unrelated) to 5 (same conclusion). Reply with JSON only: "
    '{{"score": N}}\n\nQuestion:\n{question}\n\nReference:\n{reference}\n\nAnswer:\n{answer}\n'
)
OTHER_KEYS = ("coherence", "correctness", "helpfulness")


def rubric_schema(category: str) -> dict[str, Any]:
    """The JSON schema every judge reply is constrained to (a grammar or structured output)."""
    keys, top = (("score",), 5) if category == "science" else (OTHER_KEYS, 4)
    return {"type": "object", "additionalProperties": False, "required": list(keys),
            "properties": {k: {"type": "integer", "enum": list(range(top + 1))} for k in keys}}


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
    """The rubric score of a judge's JSON reply: 0..5 for science, the sum / 12 for other; None when
    the reply does not hold every key with an integer in range."""
    try:
        reply = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    keys, top = (("score",), 5) if category == "science" else (OTHER_KEYS, 4)
    if not isinstance(reply, dict):
        return None
    values = [reply.get(k) for k in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top for v in values):
        return None
    return float(values[0]) if category == "science" else sum(values) / 12  # type: ignore[arg-type]


def llm_judge(backend: Backend, category: str, question: str, answer: str,
              reference: str | None) -> Verdict:
    if category == "science" and not reference:
        return Verdict(None, "error", "science needs a reference answer")
    template = SCIENCE_RUBRIC if category == "science" else OTHER_RUBRIC
    prompt = template.format(question=question, answer=answer, reference=reference or "")
    reply = backend.generate(prompt, [0], rubric_schema(category))[0].text
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


def check_constraints(answer: str, constraints: Any, prompt: str = "") -> Verdict:
    """Score = share of constraints satisfied. Two shapes: the IFEval one that the released data uses,
    {"instruction_id_list": [...], "kwargs": [...]}, checked by IFEval's own checkers (check_ifeval);
    and this project's list of {"type": one of _CHECKS, "value": ...}. Anything else is an `error`
    that says what was found, never a crash."""
    if isinstance(constraints, str):
        try:
            constraints = json.loads(constraints)
        except json.JSONDecodeError:
            return Verdict(None, "error", f"constraints are not JSON: {constraints[:80]!r}")
    if isinstance(constraints, dict) and "instruction_id_list" in constraints:
        return check_ifeval(answer, constraints, prompt)
    if isinstance(constraints, dict):
        constraints = constraints.get("constraints", [constraints])
    if not isinstance(constraints, list) or not constraints:
        return Verdict(None, "error", "no machine-checkable constraints")
    results, notes = [], []
    for c in constraints:
        kind = c.get("type") if isinstance(c, dict) else None
        check = _CHECKS.get(kind) if isinstance(kind, str) else None
        if check is None:
            return Verdict(None, "error", f"unknown constraint {str(c)[:60]}; known types: "
                           f"{', '.join(_CHECKS)} or IFEval's instruction_id_list")
        try:
            ok = bool(check(answer, c.get("value")))
        except (TypeError, ValueError, OverflowError) as exc:
            return Verdict(None, "error", f"constraint {kind} has a bad value {c.get('value')!r:.40}: {exc}")
        results.append(ok)
        if not ok:
            notes.append(f"{kind}={c.get('value')!r} not met")
    return Verdict(sum(results) / len(results), "ok", "; ".join(notes) or "all constraints met")


IFEVAL = "if-verifiable"
"""The PyPI package whose IFEval checkers grade instruction ids (Google's IFEval code, packaged)."""


def check_ifeval(answer: str, spec: dict[str, Any], prompt: str) -> Verdict:
    """IFEval instructions, strict mode; an id that is unknown or cannot be checked here makes the
    whole grade an `error` naming it, rather than a score over the others."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    ids, kwargs = spec.get("instruction_id_list"), spec.get("kwargs") or []
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list):
        return Verdict(None, "error", "instruction_id_list must be a non-empty list, kwargs a list")
    results, notes = [], []
    for i, instruction in enumerate(ids):
        checker_class = INSTRUCTION_DICT.get(instruction) if isinstance(instruction, str) else None
        if checker_class is None:
            return Verdict(None, "error", f"unknown IFEval instruction {instruction!r}")
        args = kwargs[i] if i < len(kwargs) and isinstance(kwargs[i], dict) else {}
        try:
            checker = checker_class(instruction)
            checker.build_description(**{k: v for k, v in args.items() if v is not None})
            if "prompt" in (checker.get_instruction_args() or {}):
                checker.build_description(prompt=prompt)
            ok = bool(answer.strip()) and bool(checker.check_following(answer))
        except LookupError:
            return Verdict(None, "error", f"{instruction} needs NLTK's punkt data, which is not installed"
                           " (python -m nltk.downloader punkt_tab)")
        except Exception as exc:  # the checker's own failure on these kwargs: say so
            return Verdict(None, "error", f"{instruction} with {args!r:.60}: {type(exc).__name__}: {exc}")
        results.append(ok)
        if not ok:
            notes.append(f"{instruction} not met")
    return Verdict(sum(results) / len(results), "ok", "; ".join(notes) or "all instructions followed")
