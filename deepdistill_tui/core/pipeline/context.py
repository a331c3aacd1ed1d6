"""What a stage is handed and what it hands back: the face's context, the run's, the result."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from deepdistill_tui.core.pipeline.events import Emit
from deepdistill_tui.core.recipe import Recipe


@dataclass(frozen=True)
class StageContext:
    """What a face hands a stage: where its events go, the signal that stops it, and the face's name
    (``cli``, ``app``; ``api`` for code that calls the core itself), kept in the ``runs`` row."""

    emit: Emit
    stop: threading.Event = field(default_factory=threading.Event)
    face: str = "api"


ChildRunner = Callable[[str, Recipe, Any, bool], "StageResult"]
"""(stage, recipe, params, skip_if_done) -> its result: ``run_stage`` bound to the store."""


@dataclass(frozen=True)
class RunContext:
    """What a stage gets: the face's context, the ``runs`` row it works under, and a handle for the
    stages a composite stage (ablate) runs inside it, each under its own row."""

    run_id: str
    emit: Emit
    stop: threading.Event
    children: ChildRunner | None = None

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    def stage(self, name: str, recipe: Recipe, params: Any = None) -> StageResult:
        """Run stage ``name`` now, with this run's events and stop signal."""
        assert self.children is not None, "a RunContext made by run_stage has its children handle"
        return self.children(name, recipe, params, False)

    def pipeline(self, recipe: Recipe, names: list[str]) -> dict[str, StageResult]:
        """Stages in order, those already done for the same recipe values skipped (as ``run`` does)."""
        assert self.children is not None, "a RunContext made by run_stage has its children handle"
        return {name: self.children(name, recipe, None, True) for name in names}


class Result(ABC):
    """A stage's typed result: the faces read its fields. ``summary()`` is its JSON form, the one the
    ``runs`` row keeps and ``--json`` prints (docs/SCHEMA.md documents the shapes; they stay)."""

    @abstractmethod
    def summary(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class StageResult:
    """What ``run_stage`` hands back: the stage's typed result (None when skipped) and its summary."""

    stage: str
    run_id: str | None
    summary: dict[str, Any]
    skipped: bool = False
    result: Result | None = None

    def typed(self, kind: type[R]) -> R:
        """The result as the stage's own type (``run_stage(...).typed(GradeResult).passed``)."""
        if not isinstance(self.result, kind):
            raise TypeError(f"stage {self.stage} gave {type(self.result).__name__}, not {kind.__name__}")
        return self.result
