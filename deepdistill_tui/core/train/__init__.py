"""Training, the launcher's side: start (or resume) the training subprocess of a ``train`` run.

``train`` writes RUN_DIR/config.json and starts ``python -m deepdistill_tui.core.train RUN_DIR``
(worker.py) as a subprocess, turns its JSON-lines stdout back into events, and stops it on the stop
signal; the run stays resumable from its last checkpoint. The ``runs`` row is the stage runner's: the
runner starts it, or takes an unfinished one up again (``resumable_run``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError, StageStopped
from deepdistill_tui.core.pipeline.context import Result
from deepdistill_tui.core.pipeline.events import (
    Emit,
    Event,
    TrainFailed,
    TrainFinished,
    TrainRun,
    from_json,
    to_json,
)
from deepdistill_tui.core.recipe import Recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.train.config import RunConfig

__all__ = ["EVENTS", "latest_run", "read_events", "resumable_run", "train"]
EVENTS = "events.jsonl"
"""RUN_DIR/events.jsonl: every event the training worker reported, in order, one JSON object a line."""


def read_events(stream: Iterable[str]) -> Iterator[Event]:
    for line in stream:
        event = from_json(line.strip()) if line.lstrip().startswith("{") else None
        if event is not None:
            yield event


def resumable_run(store: Store, recipe: Recipe, selection: str) -> str | None:
    """The newest unfinished train run of this recipe and selection whose folder is still there and
    whose training values are the recipe's now. When there are such runs but the recipe has changed
    since (a learning rate edited, say), resuming would silently train with the old values: that is
    an error naming what differs, and ``--fresh`` starts anew."""
    changed: tuple[str, list[str]] | None = None
    for run in store.runs("train", recipe.name, statuses=("running", "failed", "interrupted")):
        args = run["args"]
        if args.get("selection") != selection or not Path(args.get("run_dir", "")).is_dir():
            continue
        differences = _training_differences(run.get("recipe") or {}, recipe)
        if not differences:
            return str(run["run_id"])
        changed = changed or (str(run["run_id"]), differences)
    if changed is not None:
        run_id, differences = changed
        raise DeepDistillError(
            f"the unfinished training run {run_id} of recipe {recipe.name!r} was started with other values"
            f" ({'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}): resuming would"
            " train with the old ones; pass --fresh to start a new run, or restore them to resume")
    return None


def _training_differences(stored: dict[str, Any], recipe: Recipe) -> list[str]:
    """'training.learning_rate 0.0005 -> 0.0001' for every training value that differs between the
    recipe a run was started with and the recipe now."""
    out: list[str] = []
    _diff("training", stored.get("training"), recipe.training.model_dump(mode="json"), out)
    return out


def _diff(key: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            _diff(f"{key}.{k}", old.get(k), new.get(k), out)
    elif old != new:
        out.append(f"{key} {old!r} -> {new!r}")


def latest_run(store: Store, recipe: Recipe) -> dict[str, Any] | None:
    """The recipe's newest training run, whoever started it and however it ended: its runs row, with
    ``run_dir`` and ``events`` (the path of its event log) when its folder is still there."""
    for run in store.runs("train", recipe.name):
        run_dir = run["args"].get("run_dir")
        if run_dir and Path(run_dir).is_dir():
            return {**run, "run_dir": run_dir, "events": str(Path(run_dir) / EVENTS)}
    return None


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _terminate_on(stop: threading.Event, proc: Any) -> None:
    while proc.poll() is None:
        if stop.wait(0.5):
            proc.terminate()
            return


def _run_dir(store: Store, recipe: Recipe, selection: str, run_id: str, runs_dir: Path | None) -> Path:
    """The run's folder: a resumed run's own, else a new one with its config."""
    run = store.run(run_id)
    existing = (run or {}).get("args", {}).get("run_dir")
    if existing and Path(existing, "config.json").is_file():
        return Path(existing)
    run_dir = (runs_dir or store.path.resolve().parent / "runs") / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    RunConfig(recipe=recipe, selection=selection, db=str(store.path.resolve()), run_id=run_id).write(run_dir)
    store.update_run_args(run_id, selection=selection, run_dir=str(run_dir))
    return run_dir


@dataclass(frozen=True)
class TrainResult(Result):
    run_id: str
    run_dir: str
    worker: dict[str, Any]
    """What the training subprocess reported at its end (steps, losses, the exported files); its keys
    are the worker's, documented in docs/SCHEMA.md with the runs row."""

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": self.run_dir, **self.worker}


def train(store: Store, recipe: Recipe, selection: str, *, run_id: str, emit: Emit,
          runs_dir: Path | None = None, stop: threading.Event | None = None) -> TrainResult:
    """SFT in a subprocess under the runs row ``run_id``; its events go to ``emit``. Setting ``stop``
    terminates the subprocess; the run stays resumable from its last checkpoint."""
    if store.scalar("SELECT 1 FROM selections WHERE name = ?", (selection,)) is None:
        raise DeepDistillError(f"no selection named {selection!r} in the store; select one first")
    from deepdistill_tui.core.student.checkpoint import fetch_student

    fetch_student(recipe.training.student, emit)  # here, where the download's progress can be seen
    run_dir = _run_dir(store, recipe, selection, run_id, runs_dir)
    emit(TrainRun(run_id, str(run_dir), resumed=(run_dir / "checkpoints").is_dir()))
    summary, error, code = _supervise(run_dir, emit, stop)
    if summary is None and stop is not None and stop.is_set():
        raise StageStopped(f"training run {run_id} stopped; train again to resume from its last checkpoint")
    if summary is None:
        raise DeepDistillError(error or f"training exited with status {code}: "
                               f"{_last_line(run_dir / 'train.log')} (log: {run_dir / 'train.log'})")
    return TrainResult(run_id, str(run_dir), summary)


def _supervise(run_dir: Path, emit: Emit, stop: threading.Event | None,
               ) -> tuple[dict[str, Any] | None, str | None, int]:
    """Run the worker to its end: (its summary or None, its error, its exit status)."""
    with (run_dir / "train.log").open("a") as log, (run_dir / EVENTS).open("a") as events:
        proc = subprocess.Popen([sys.executable, "-m", "deepdistill_tui.core.train", str(run_dir)],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdout is not None
        summary: dict[str, Any] | None = None
        error = None
        if stop is not None:
            threading.Thread(target=_terminate_on, args=(stop, proc), daemon=True).start()
        try:
            for event in read_events(proc.stdout):
                # Kept beside the run, so that any face (the app opened after a headless run, or
                # while one goes on in another process) shows its loss and checkpoints.
                events.write(to_json(event) + "\n")
                events.flush()
                emit(event)
                if isinstance(event, TrainFinished):
                    summary = event.summary
                elif isinstance(event, TrainFailed):
                    error = event.error
            return summary, error, proc.wait()
        except BaseException:
            proc.terminate()  # Ctrl-C: the child stops; its last checkpoint stays for a resume
            proc.wait()
            raise
