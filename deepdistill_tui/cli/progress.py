"""The CLI's view of the core's events: a bar for each thing in progress, a line for each milestone.

One ``Reporter`` serves every command, so ``sample``, ``grade``, ``train``, ``eval``, ``run`` and
``ablate`` show the same work the same way: a bar per teacher while sampling, one for grading, one for
training (loss and learning rate beside it), one per evaluated model.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from deepdistill_tui.core.pipeline.events import (
    AblateArm,
    DownloadProgress,
    EvalFallback,
    EvalProgress,
    Event,
    GradeProgress,
    GradeStarted,
    PerplexityProgress,
    PerplexityStarted,
    SampleFailed,
    SampleProgress,
    SampleStarted,
    StageFailed,
    StageProgress,
    StageSkipped,
    StageStarted,
    TrainCheckpoint,
    TrainExported,
    TrainNotice,
    TrainRun,
    TrainStarted,
    TrainStep,
    Waiting,
)

LOG_EVERY_S = 10.0
LOG_EVERY_SHARE = 0.05


class _LogLines:
    """Progress as plain lines: one when a bar starts, then at most one every LOG_EVERY_S seconds or
    LOG_EVERY_SHARE of its total, whichever comes first, and one when it completes; each with the
    counts, the rate since the bar started and the time left at that rate."""

    def __init__(self, write: Any, every_s: float = LOG_EVERY_S,
                 every_share: float = LOG_EVERY_SHARE) -> None:
        self.write, self.every_s, self.every_share = write, every_s, every_share
        self._state: dict[str, tuple[float, int, float, float]] = {}  # start, start done, last time, share

    def update(self, key: str, total: int | None, done: int | None, info: str) -> None:
        now, done = time.monotonic(), done or 0
        share = done / total if total else 0.0
        if key not in self._state:
            self._state[key] = (now, done, now, share)
            self.write(self._text(key, total, done, info, None, None))
            return
        start, start_done, last, last_share = self._state[key]
        finished = total is not None and done >= total
        if not finished and now - last < self.every_s and share - last_share < self.every_share:
            return
        if finished and last_share >= 1.0:
            return  # said already
        self._state[key] = (start, start_done, now, share)
        rate = (done - start_done) / (now - start) if now > start else None
        left = (total - done) / rate if rate and total else None
        self.write(self._text(key, total, done, info, rate, left))

    @staticmethod
    def _text(key: str, total: int | None, done: int, info: str, rate: float | None,
              left: float | None) -> str:
        parts = [f"{key}: {done}/{total}" if total else f"{key}: {done}"]
        if total:
            parts[0] += f" ({100 * done / total:.0f}%)"
        if rate:
            parts.append(f"{rate:.2f}/s")
        if left is not None:
            parts.append(f"{int(left) // 60}:{int(left) % 60:02d} left")
        if info:
            parts.append(info)
        return "  " + ", ".join(parts)


class Reporter:
    """Call it with events; use it as a context manager around the stage."""

    def __init__(self, console: Any, *, stage_lines: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # Transient: the bars are for while work runs; each command prints its result when done.
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.stage_lines = stage_lines
        """Print a line as each stage starts, is skipped or fails (``run`` and ``ablate``)."""
        self._tasks: dict[str, Any] = {}
        self.live = bool(console.is_terminal)
        """On a terminal, live bars; in a log file (``nohup``, a pipe) a bar would print nothing until
        its stage ended, so each bar is a line at a bounded rate instead (``_LogLines``)."""
        self._log_lines = _LogLines(self.line)

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=not self.live)  # a log keeps each line whole

    def _bar(self, key: str, total: int | None = None, done: int | None = None, info: str = "") -> None:
        if not self.live:
            self._log_lines.update(key, total, done, info)
            return
        if key not in self._tasks:
            self._tasks[key] = self.progress.add_task(key, total=total, info=info)
        self.progress.update(self._tasks[key], total=total, completed=done, info=info)

    def __call__(self, event: Event) -> None:  # noqa: C901 - one case per event kind, nothing nested
        match event:
            case StageStarted(stage=stage, run_id=run_id) if self.stage_lines:
                self.line(f"[bold]▶ {stage}[/] (run {run_id})")
            case StageSkipped(stage=stage, reason=reason) if self.stage_lines:
                self.line(f"[dim]· {stage}: skipped, {reason}[/]")
            case StageFailed(stage=stage, error=error, stopped=stopped) if self.stage_lines:
                self.line(f"[yellow]■ {stage} stopped[/]" if stopped else f"[red]✘ {stage}: {error}[/]")
            case StageProgress(message=message):
                self.line(f"  {message}")
            case Waiting(message=message):
                self.line(f"[yellow]{message}[/]")
            case DownloadProgress():
                mb = 1 << 20
                self._bar(f"downloading {event.name}", (event.total_bytes or 0) // mb or None,
                          event.done_bytes // mb, event.text())
            case SampleStarted(teacher=t, queries_total=total):
                self._bar(f"sampling {t}", total, 0)
            case SampleProgress():
                self._bar(f"sampling {event.teacher}", event.queries_total, event.queries_done,
                          f"{event.tokens_per_s:.0f} tok/s{event.engine_text()}")
            case SampleFailed(error=error):
                self.line(f"[red]✘ {error}[/]")
            case GradeStarted(total=total):
                self._bar("grading", total, 0)
            case GradeProgress():
                info = ", ".join(f"{k} {v}" for k, v in sorted(event.by_status.items()))
                self._bar("grading", event.total, event.done, info)
            case PerplexityStarted(total=total, model=model):
                self._bar(f"perplexity ({model})", total, 0)
            case PerplexityProgress(done=done, total=total):
                key = next((k for k in self._tasks if k.startswith("perplexity")), "perplexity")
                self._bar(key, total, done)
            case TrainRun(run_id=run_id, run_dir=run_dir, resumed=resumed):
                self.line(f"{'resuming' if resumed else 'training'} run {run_id} in {run_dir}")
            case TrainStarted():
                resume = f", resuming from {Path(event.resume_from).name}" if event.resume_from else ""
                quant = f" in {event.quantization.upper()}" if event.quantization else ""
                self.line(f"backend {event.backend}{quant}, {event.examples} examples, {event.model}{resume}")
            case TrainNotice(message=message):
                self.line(f"[yellow]{message}[/]")
            case TrainStep():
                self._bar("training", event.max_steps, event.step,
                          f"loss {event.loss:.4f}  lr {event.learning_rate or 0:.2e}")
            case TrainCheckpoint(step=step):
                self.line(f"  checkpoint at step {step}")
            case TrainExported(merged=merged, gguf=gguf):
                self.line(f"  exported {gguf or merged}")
            case EvalProgress(model=model, done=done, total=total):
                self._bar(f"evaluating {model}", total, done)
            case EvalFallback(message=message):
                self.line(f"[yellow]{message}[/]")
            case AblateArm(arm=arm, status=status):
                self.line(f"[bold]arm {arm}[/]: {status}")
