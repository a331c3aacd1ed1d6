"""Instruction following: constraints checked in code (IFEval's checkers, or this project's own list)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from deepdistill_tui import __version__
from deepdistill_tui.core.grading.base import GraderKind, Item, Scored, Verdict


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


class Constraints(GraderKind):
    """Constraints the query carries, checked in code; a query with none goes to the judge."""

    name = "if"

    def version(self) -> str:
        return f"deepdistill-tui {__version__}"

    def accepts(self, item: Item) -> bool:
        return bool(item.constraints)

    def grade(self, items: list[Item]) -> Iterator[Scored]:
        for item in items:
            t0 = time.perf_counter()
            verdict = check_constraints(item.answer or item.response, item.constraints, item.question)
            yield Scored(item, verdict, time.perf_counter() - t0)
