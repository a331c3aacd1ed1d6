"""The Train tab: start SFT of the student on a saved selection, watch the loss curve, learning rate,
progress with ETA and the run's log tail; stop it, and start it again to resume from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Log, Select, Static

from deepdistill_tui.core.pipeline.events import (
    Event,
    TrainCheckpoint,
    TrainExported,
    TrainFinished,
    TrainNotice,
    TrainRun,
    TrainStarted,
    TrainStep,
)
from deepdistill_tui.tui.plots import LossChart
from deepdistill_tui.tui.widgets import WorkBar


class TrainPane(Vertical):
    DEFAULT_CSS = """
    TrainPane #train-top { height: 3; padding: 0 1; }
    TrainPane #train-selection { width: 40; }
    TrainPane #train-status { padding: 0 2; height: auto; }
    TrainPane #train-progress { margin: 0 2; }
    TrainPane #loss-curve { height: 2fr; min-height: 8; margin: 0 1; }
    TrainPane #train-log { height: 1fr; min-height: 4; border: round $primary; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_path: Path | None = None
        self.log_offset = 0
        self.followed: str | None = None
        """The run whose event log (RUN_DIR/events.jsonl) this tab replays and follows: the recipe's
        newest training run, whoever started it, until the app starts one of its own."""
        self.events_path: Path | None = None
        self.events_offset = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="train-top"):
            yield Label("selection ")
            yield Select[str]([], id="train-selection", prompt="(save a selection first)")
        yield Static("Press [b]T[/] to train the student on the selection; [b]x[/] stops, [b]T[/] again "
                     "resumes from the last checkpoint.", id="train-status")
        yield WorkBar(id="train-progress", show_eta=True)
        yield LossChart(id="loss-curve")
        yield Log(id="train-log", max_lines=400)

    @property
    def losses(self) -> list[float]:
        return self.query_one("#loss-curve", LossChart).losses

    def on_mount(self) -> None:
        self.set_interval(1.0, self.tail_log)
        self.set_interval(1.0, self.tail_events)

    def follow(self, run: dict[str, Any] | None) -> None:
        """Show the recipe's newest training run from its event log, and keep following it while it
        goes on (in this process or another). The app's own live run takes over when it starts."""
        if run is None or run["run_id"] == self.followed:
            return
        self.followed = run["run_id"]
        self.events_path, self.events_offset = Path(run["events"]), 0
        self.query_one("#train-log", Log).clear()
        self.query_one("#train-log", Log).write_line(
            f"run {run['run_id']} ({run['status']}), started {_when(run['started_at'])} · {run['run_dir']}")
        self.tail_events()

    def tail_events(self) -> None:
        if self.events_path is None or not self.events_path.is_file():
            return
        from deepdistill_tui.core.pipeline.events import from_json

        with self.events_path.open("rb") as f:
            f.seek(self.events_offset)
            chunk = f.read(1 << 20)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next tick
        self.events_offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            event = from_json(line) if line.startswith("{") else None
            if event is not None:
                self.handle(event, replayed=True)

    def selection(self) -> str | None:
        value = self.query_one("#train-selection", Select).value
        return value if isinstance(value, str) else None

    def set_selections(self, names: list[str]) -> None:
        box = self.query_one("#train-selection", Select)
        current = self.selection()
        box.set_options([(n, n) for n in names])
        if names:
            box.value = current if current in names else names[0]

    def handle(self, event: Event, replayed: bool = False) -> None:
        status = self.query_one("#train-status", Static)
        bar = self.query_one("#train-progress", WorkBar)
        log = self.query_one("#train-log", Log)
        match event:
            case TrainRun(run_id=run_id, run_dir=run_dir, resumed=resumed):
                chart = self.query_one("#loss-curve", LossChart)
                if not replayed:  # the app's own run: its live events replace the replay
                    self.followed, self.events_path = run_id, None
                    chart.clear()
                elif resumed is False:
                    chart.clear()
                self.log_path, self.log_offset = Path(run_dir) / "train.log", 0
                status.update(f"{'resuming' if resumed else 'starting'} run {run_id} · {run_dir}; "
                              "loading the student…")
            case TrainStarted():
                resume = f", resuming from {Path(event.resume_from).name}" if event.resume_from else ""
                quant = f" in {event.quantization.upper()}" if event.quantization else ""
                status.update(f"backend [b]{event.backend}[/]{quant}, {event.examples} examples, "
                              f"{event.model}{resume}")
            case TrainNotice(message=message):
                log.write_line(message)
            case TrainStep():
                self.query_one("#loss-curve", LossChart).add(event.step, event.loss, event.learning_rate)
                bar.update(total=max(event.max_steps or 1, 1), progress=event.step)
                tps = f" · {event.tokens_per_s:.0f} tok/s" if event.tokens_per_s else ""
                status.update(f"step {event.step}/{event.max_steps} · loss [b]{event.loss:.4f}[/]"
                              f" · lr {event.learning_rate or 0:.2e}{tps}")
            case TrainCheckpoint(step=step):
                log.write_line(f"checkpoint at step {step}")
            case TrainExported(merged=merged, gguf=gguf):
                log.write_line(f"exported {gguf or merged}")
            case TrainFinished(summary=s):
                status.update(f"finished: {s['steps']} steps, loss {s['first_loss']:.4f} → "
                              f"{s['last_loss']:.4f} · {s['output']}")

    def tail_log(self) -> None:
        """New lines of the run's log (the trainer's stderr), read where the last read stopped."""
        if self.log_path is None or not self.log_path.is_file():
            return
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            chunk = f.read(65536)
        self.log_offset += len(chunk)
        log = self.query_one("#train-log", Log)
        for line in chunk.decode(errors="replace").replace("\r", "\n").splitlines():
            if line.strip():
                log.write_line(line[:300])


def _when(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"
