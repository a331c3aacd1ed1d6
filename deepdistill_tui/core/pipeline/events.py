"""What the core tells its faces while it works: typed, frozen events and the one sink type, ``Emit``.

Every long stage reports through an ``Emit`` callable. The CLI turns events into progress bars and
lines, the app into widget updates, the training subprocess into JSON lines on its stdout (and its
launcher back into events with ``from_json``). An event's ``kind`` names it on the wire; its
``topic()`` says which part of the pipeline it belongs to (the app routes it to that tab by it), and
``high_rate`` marks the progress events a face may thin to the newest. A face renders by the class
(``match``), never by strings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    area: ClassVar[str] = "run"
    """The part of the pipeline: run (any stage), download, sample, grade, train or eval."""
    high_rate: ClassVar[bool] = False
    """Sent many times a second: a face may keep only the newest of a kind."""

    def topic(self) -> str:
        return self.area

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


Emit = Callable[[Event], None]


def _noop(_: Event) -> None:
    """The sink of a caller that does not listen."""


noop = _noop


_KINDS: dict[str, type[Event]] = {}
E = TypeVar("E", bound=type[Event])


def _kind(name: str, area: str = "run", high_rate: bool = False) -> Callable[[E], E]:
    def register(cls: E) -> E:
        cls.kind, cls.area, cls.high_rate = name, area, high_rate
        _KINDS[name] = cls
        return cls

    return register


def to_json(event: Event) -> str:
    return json.dumps(event.to_dict(), default=str)


def from_json(line: str) -> Event | None:
    """An event from one JSON line, or None for a line that is not one (a library's stray print)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("event") not in _KINDS:
        return None
    cls = _KINDS[data["event"]]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------- any stage


@_kind("stage_started")
@dataclass(frozen=True)
class StageStarted(Event):
    stage: str
    run_id: str | None


@_kind("stage_progress")
@dataclass(frozen=True)
class StageProgress(Event):
    stage: str
    message: str


@_kind("stage_skipped")
@dataclass(frozen=True)
class StageSkipped(Event):
    stage: str
    reason: str


@_kind("stage_finished")
@dataclass(frozen=True)
class StageFinished(Event):
    stage: str
    run_id: str | None
    summary: dict[str, Any]


@_kind("stage_failed")
@dataclass(frozen=True)
class StageFailed(Event):
    stage: str
    run_id: str | None
    error: str
    stopped: bool = False
    """Ended by the stop signal: resumable, not broken."""


@_kind("waiting")
@dataclass(frozen=True)
class Waiting(Event):
    """Another process holds this stage's lock on the store; this one waits for it."""

    stage: str
    message: str

    def topic(self) -> str:
        return self.stage  # the tab of the stage that waits


# ---------------------------------------------------------------- models


@_kind("download_progress", "download", high_rate=True)
@dataclass(frozen=True)
class DownloadProgress(Event):
    """A model file (or a student's weights) coming from the Hub."""

    name: str
    done_bytes: int
    total_bytes: int | None
    bytes_per_s: float | None = None
    eta_s: float | None = None
    finished: bool = False

    def text(self) -> str:
        mb = 1 << 20
        total = f"/{self.total_bytes / mb:,.0f}" if self.total_bytes else ""
        rate = f" · {self.bytes_per_s / mb:.1f} MB/s" if self.bytes_per_s else ""
        eta = f" · {self.eta_s:.0f} s left" if self.eta_s is not None and not self.finished else ""
        return f"{self.done_bytes / mb:,.0f}{total} MB{rate}{eta}"


# ---------------------------------------------------------------- sampling


@_kind("sample_started", "sample")
@dataclass(frozen=True)
class SampleStarted(Event):
    teacher: str
    queries_total: int
    passes_total: int


@_kind("sample_progress", "sample", high_rate=True)
@dataclass(frozen=True)
class SampleProgress(Event):
    teacher: str
    queries_done: int
    queries_total: int
    samples: int
    tokens_per_s: float
    in_flight: int | None = None
    eta_s: float | None = None
    last_response: str = ""

    def engine_text(self) -> str:
        """The part of a progress line about the engine: both faces show it the same way."""
        return f" · {self.in_flight} sequences in flight" if self.in_flight else ""


@_kind("sample_failed", "sample")
@dataclass(frozen=True)
class SampleFailed(Event):
    teacher: str
    error: str


# ---------------------------------------------------------------- grading


@_kind("grade_started", "grade")
@dataclass(frozen=True)
class GradeStarted(Event):
    total: int


@_kind("grade_progress", "grade", high_rate=True)
@dataclass(frozen=True)
class GradeProgress(Event):
    done: int
    total: int
    passed: int | None = None
    by_status: dict[str, int] = field(default_factory=dict)
    per_s: float | None = None


@_kind("perplexity_started", "grade")
@dataclass(frozen=True)
class PerplexityStarted(Event):
    total: int
    model: str


@_kind("perplexity_progress", "grade", high_rate=True)
@dataclass(frozen=True)
class PerplexityProgress(Event):
    done: int
    total: int


# ---------------------------------------------------------------- training


@_kind("train_run", "train")
@dataclass(frozen=True)
class TrainRun(Event):
    run_id: str
    run_dir: str
    resumed: bool = False


@_kind("train_started", "train")
@dataclass(frozen=True)
class TrainStarted(Event):
    backend: str
    examples: int
    resume_from: str | None
    world_size: int = 1
    engine: str = "single"
    model: str = ""
    """What was loaded: the recipe's student, or what the backend put in its place (recorded)."""
    quantization: str | None = None
    dtype: str = ""


@_kind("train_notice", "train")
@dataclass(frozen=True)
class TrainNotice(Event):
    """One line the run's user must see: a backend that gave way to another, and why."""

    message: str


@_kind("train_step", "train", high_rate=True)
@dataclass(frozen=True)
class TrainStep(Event):
    step: int
    max_steps: int
    loss: float
    learning_rate: float | None = None
    epoch: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None


@_kind("train_checkpoint", "train")
@dataclass(frozen=True)
class TrainCheckpoint(Event):
    step: int


@_kind("train_exported", "train")
@dataclass(frozen=True)
class TrainExported(Event):
    merged: str
    gguf: str | None = None


@_kind("train_finished", "train")
@dataclass(frozen=True)
class TrainFinished(Event):
    summary: dict[str, Any]


@_kind("train_failed", "train")
@dataclass(frozen=True)
class TrainFailed(Event):
    error: str


# ---------------------------------------------------------------- evaluation and ablation


@_kind("eval_progress", "eval", high_rate=True)
@dataclass(frozen=True)
class EvalProgress(Event):
    model: str
    done: int
    total: int


@_kind("eval_fallback", "eval")
@dataclass(frozen=True)
class EvalFallback(Event):
    model: str
    message: str


@_kind("ablate_arm")
@dataclass(frozen=True)
class AblateArm(Event):
    arm: str
    status: str
    """started, skipped (already done) or finished."""
    row: dict[str, Any] | None = None

