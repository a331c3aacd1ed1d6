"""The teacher contract: what every backend does, and what it returns.

A backend answers questions for one teacher of a recipe: ``generate`` gives one completion per seed,
``generate_many`` takes a stream of requests and hands each back when all of its passes are done (an
engine that batches across queries overrides it; the default answers one query at a time), ``close``
releases the model or the connections. What only some engines can do is a capability a caller asks
for (``scores_logprobs``), never an ``isinstance``. To add a backend, see docs/EXTENDING.md.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import LlamaCppTeacher, OpenAITeacher

COMPLETION_STOP = "\nQ:"
RESPONSE_BYTES_PER_TOKEN = 64
"""A token is a few bytes of text, a few dozen as JSON-escaped Unicode: past this, a reply is refused."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float
    prefill: str = ""  # prompt text that opened the response (R1's "<think>\n"); see text.think_prefill


@dataclass
class Request:
    """One query's passes: answered together, returned together (one transaction in the store)."""

    key: Any
    question: str
    seeds: list[int]


class TeacherError(DeepDistillError):
    """A teacher that cannot answer: the message names the teacher and the cause."""


class PromptTooLong(TeacherError):
    """This query cannot be answered by this teacher; other queries can."""


Answer = tuple[Request, list[Completion] | PromptTooLong]
"""A request with its completions, or with why this teacher cannot answer it."""
Answers = Generator[Answer, None, None]
"""What ``generate_many`` returns; closing it early frees what the engine holds for queries in flight."""


class Backend(ABC):
    """One teacher's engine. Subclasses set ``teacher`` and implement ``generate`` and ``close``."""

    scores_logprobs: ClassVar[bool] = False
    """Can it score a given response token by token (``response_logprobs``, the perplexity filter)?"""
    in_flight: int = 0
    """Sequences being decoded right now, for progress reports; 0 for engines that cannot tell."""

    @abstractmethod
    def generate(self, question: str, seeds: list[int],
                 schema: dict[str, Any] | None = None) -> list[Completion]:
        """One completion per seed; with ``schema``, every completion is JSON of that schema
        (a llama.cpp grammar, or the server's structured output)."""

    def generate_many(self, requests: Iterable[Request],
                      schema: dict[str, Any] | None = None) -> Answers:
        """Each request's completions when its last pass ends, in any order. This default answers one
        query at a time; an engine that batches across queries overrides it."""
        for req in requests:
            try:
                yield req, self.generate(req.question, req.seeds, schema)
            except PromptTooLong as exc:
                yield req, exc

    def response_logprobs(self, question: str, response: str) -> list[float]:
        """Log-probability of each token of ``response`` after the teacher's prompt for ``question``."""
        raise TeacherError(f"backend {type(self).__name__} cannot score responses (no log-probabilities)")

    @abstractmethod
    def close(self) -> None: ...


def completion_prompt(teacher: LlamaCppTeacher | OpenAITeacher, question: str) -> str:
    """The few-shot Q:/A: prompt that base models need; they stop at the next "Q:"."""
    return f"{teacher.few_shot}Q: {question}\nA:"


def chat_messages(teacher: LlamaCppTeacher | OpenAITeacher, question: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if teacher.system_prompt:
        messages.insert(0, {"role": "system", "content": teacher.system_prompt})
    return messages


def default_threads() -> int:
    """All cores this process may use: one sampler at a time holds them (see sample.sampler_lock)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
