"""The grader contract: what every kind of grader is, and what it is handed.

A grader *kind* turns responses into verdicts for the categories a recipe maps to it
(``grading.graders``; the default in ``registry.DEFAULT_GRADERS``). The ``Grader`` in ``stage.py``
routes each response to its kind, applies the format filter first and the pass threshold after; a kind
knows only how to score. To add one, see docs/EXTENDING.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from deepdistill_tui.core.grading.sandbox.host import Limits
from deepdistill_tui.core.recipe import GradingConfig
from deepdistill_tui.core.teachers.base import Backend


@dataclass
class Item:
    """One response to grade, with what its query brings (a reference, tests, constraints)."""

    key: Any
    category: str
    question: str
    response: str
    reasoning: str | None
    answer: str | None
    ground_truth: str | None = None
    test_cases: Any = None
    constraints: Any = None


@dataclass(frozen=True)
class Verdict:
    """A kind's finding: a score (None when none could be given), a status and a line saying why."""

    score: float | None
    status: str
    detail: str


class Scored(NamedTuple):
    item: Item
    verdict: Verdict
    seconds: float


@dataclass(frozen=True)
class GradingEnv:
    """What a kind may use: the recipe's grading settings, the worker count, the sandbox's limits and,
    for kinds that need a model, a factory for the judge (None when the recipe names no judge)."""

    cfg: GradingConfig
    workers: int
    limits: Limits
    judge: Callable[[], Backend] | None = None


class GraderKind(ABC):
    """One way of scoring responses.

    ``name`` is what the ``grades`` table stores and recipes refer to; ``version()`` is stored beside
    every grade, so a change in how a kind scores shows in the data. ``grade`` takes a batch and yields
    exactly one ``Scored`` per item, in any order; hostile input (no answer, the wrong shape of tests,
    code that attacks the grader) is a verdict, never an exception. ``close`` releases what the kind
    started (processes, sandboxes, a judge) and may be called more than once.
    """

    name: ClassVar[str]
    needs_model: ClassVar[bool] = False
    """True for kinds that ask a model (a judge): evaluation uses only kinds that do not."""

    def __init__(self, env: GradingEnv) -> None:
        self.env = env

    @abstractmethod
    def version(self) -> str: ...

    def accepts(self, item: Item) -> bool:
        """Can this kind grade ``item`` at all? One that cannot goes to the judge instead."""
        return True

    @abstractmethod
    def grade(self, items: list[Item]) -> Iterator[Scored]: ...

    def close(self) -> None:  # noqa: B027 - most kinds hold nothing to release
        """Release what ``grade`` started."""
