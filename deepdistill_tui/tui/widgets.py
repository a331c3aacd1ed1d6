"""Small widgets the tabs share."""

from __future__ import annotations

from textual._types import UnusedParameter
from textual.widgets import ProgressBar
from textual.widgets._progress_bar import UNUSED


class WorkBar(ProgressBar):
    """A progress bar that stays out of sight until its work starts: idle, a bar read `--% --:--:--`
    in three tabs, which looks like something stuck."""

    DEFAULT_CSS = """
    WorkBar { display: none; }
    WorkBar.-working { display: block; }
    """

    def update(self, *, total: float | UnusedParameter | None = UNUSED,
               progress: float | UnusedParameter = UNUSED, advance: float | UnusedParameter = UNUSED) -> None:
        # The constructor, on_mount and a one-second clock call update() with nothing: only work
        # reported (a total, a position, a step) shows the bar.
        reported = any(v is not UNUSED for v in (total, progress, advance))
        if reported and self.is_mounted:
            self.add_class("-working")
        super().update(total=total, progress=progress, advance=advance)
