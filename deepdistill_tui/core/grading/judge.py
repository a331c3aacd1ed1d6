"""The LLM judge for what code cannot check exactly (science and other, docs/PAPER.md section 3), and the
format filter that applies to every response."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from deepdistill_tui import __version__
from deepdistill_tui.core.grading.base import GraderKind, GradingEnv, Item, Scored, Verdict
from deepdistill_tui.core.teachers.base import Backend

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


class Judge(GraderKind):
    """A rubric answered by a teacher model (``grading.judge_teacher``), opened at the first item."""

    name = "judge"
    needs_model = True

    def __init__(self, env: GradingEnv) -> None:
        super().__init__(env)
        self._backend: Backend | None = None

    def version(self) -> str:
        return f"deepdistill-tui {__version__}"

    def grade(self, items: list[Item]) -> Iterator[Scored]:
        for item in items:
            t0 = time.perf_counter()
            yield Scored(item, self._verdict(item), time.perf_counter() - t0)

    def _verdict(self, item: Item) -> Verdict:
        if self.env.judge is None:
            return Verdict(None, "error", "no judge: set grading.judge_teacher in the recipe")
        if self._backend is None:
            self._backend = self.env.judge()
        category = "science" if item.category == "science" else "other"
        return llm_judge(self._backend, category, item.question, item.answer or item.response,
                         item.ground_truth)

    def close(self) -> None:
        if self._backend:
            self._backend.close()
            self._backend = None
