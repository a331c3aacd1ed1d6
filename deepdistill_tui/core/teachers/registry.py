"""Every teacher backend by the name a recipe's ``backend:`` gives, and the one way to open one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepdistill_tui.core.pipeline.events import Emit
from deepdistill_tui.core.recipe import Teacher
from deepdistill_tui.core.teachers import llama_cpp, openai
from deepdistill_tui.core.teachers.base import Backend, TeacherError

Opener = Callable[..., tuple[Backend, Path | None]]
"""(teacher, passes, sequences, emit) -> the backend and the model file it loaded, if any."""

BACKENDS: dict[str, Opener] = {
    "llama_cpp": llama_cpp.open_backend,
    "openai": openai.open_backend,
}


def open_backend(teacher: Teacher, passes: int, sequences: int | None = None,
                 emit: Emit | None = None) -> tuple[Backend, Path | None]:
    """The teacher's backend, sized for ``passes`` per query and ``sequences`` in flight."""
    opener = BACKENDS.get(teacher.backend)
    if opener is None:
        raise TeacherError(f"teacher {teacher.name}: backend {teacher.backend} cannot sample")
    return opener(teacher, passes, sequences, emit)


def needs_logprobs(backend: Backend, teacher: Any, purpose: str) -> None:
    """Refuse, in one line naming the teacher, a backend that cannot score responses."""
    if not backend.scores_logprobs:
        raise TeacherError(f"teacher {teacher.name}: backend {teacher.backend} cannot score {purpose} "
                           "(no log-probabilities); use a llama_cpp teacher")
