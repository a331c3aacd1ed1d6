"""The store's runs as a person reads them: one line per run, and what one run was given and did.

Every face records its runs in the same ``runs`` table (``Store.start_run``), so a run started by
``deepdistill-tui run`` on a server overnight reads the same here as one the app started itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepdistill_tui.core.pipeline.events import (
    TrainCheckpoint,
    TrainExported,
    TrainStarted,
    TrainStep,
    from_json,
)
from deepdistill_tui.core.store.database import Store

SUMMARY_CHARS = 120


@dataclass(frozen=True)
class RunLine:
    run_id: str
    stage: str
    face: str
    recipe: str
    started_at: float
    seconds: float | None
    """None while it runs (or when a killed process left it unfinished)."""
    status: str
    summary: str


@dataclass
class RunDetail:
    line: RunLine
    parameters: dict[str, Any]
    recipe_values: dict[str, Any]
    """The resolved recipe, flattened to dotted keys (``sampling.passes``)."""
    result: Any
    error: str | None
    run_dir: str | None = None
    events: list[str] = field(default_factory=list)
    """For training: the event log condensed (steps, first and last loss, checkpoints, export)."""


def run_lines(store: Store, limit: int = 500) -> list[RunLine]:
    return [_line(run) for run in store.recent_runs(limit)]


def run_detail(store: Store, run_id: str) -> RunDetail | None:
    run = store.run(run_id)
    if run is None:
        return None
    args = dict(run["args"])
    run_dir = args.get("run_dir") if run["command"] == "train" else None
    return RunDetail(_line(run), args, flatten(run.get("recipe") or {}), run.get("result"),
                     run.get("error"), run_dir, training_events(Path(run_dir)) if run_dir else [])


def _line(run: dict[str, Any]) -> RunLine:
    finished = run.get("finished_at")
    return RunLine(run["run_id"], run["command"], run.get("face") or "-", run.get("recipe_name") or "-",
                   float(run["started_at"]), finished - run["started_at"] if finished else None,
                   run["status"], summarize(run.get("result"), run.get("error")))


def summarize(result: Any, error: str | None) -> str:
    """One line: the error, or the result's numbers by their own names (``responses 720 · kept 65``),
    each name once, nested results and lists of them included."""
    if error:
        return " ".join(error.split())[:SUMMARY_CHARS]
    if result is None:
        return ""
    seen: dict[str, Any] = {}
    for name, value in _leaves(result):
        if name not in seen and isinstance(value, int | float) and not isinstance(value, bool):
            seen[name] = value
    return " · ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in seen.items())[:SUMMARY_CHARS]


def _leaves(value: Any, name: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, str(k))]
    if isinstance(value, list):
        return [leaf for v in value[:3] for leaf in _leaves(v, name)]
    return [(name, value)]


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole (a list of teachers reads better as one)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.update(flatten(item, f"{name}."))
        else:
            out[name] = item
    return out


def training_events(run_dir: Path) -> list[str]:
    """A training run's event log (RUN_DIR/events.jsonl) in a few lines."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return [f"no event log at {path}"]
    steps: list[TrainStep] = []
    lines: list[str] = []
    for raw in path.read_text(errors="replace").splitlines():
        match from_json(raw):  # None for a line still being written
            case TrainStep() as step:
                steps.append(step)
            case TrainStarted(backend=backend, examples=examples, quantization=quant):
                lines.append(f"backend {backend}{f' ({quant})' if quant else ''}, {examples} examples")
            case TrainCheckpoint(step=step_no):
                lines.append(f"checkpoint at step {step_no}")
            case TrainExported(merged=merged, gguf=gguf):
                lines.append(f"exported {gguf or merged}")
    if steps:
        lines.insert(0, f"{len(steps)} steps: loss {steps[0].loss:.4f} at step {steps[0].step} -> "
                        f"{steps[-1].loss:.4f} at step {steps[-1].step}")
    return lines
