"""Modal screens: the key reference, a rehearsal's plan and the quit confirmation."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class HelpScreen(ModalScreen[None]):
    """Every key of the app with what it does; the same actions are in the command palette."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 72; max-width: 100%; height: auto; max-height: 90%; border: round $primary;
            background: $surface; padding: 0 1; }
    """

    def __init__(self, rows: list[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        lines = [f"[b]{key:>10}[/]  {text}" for key, text in self.rows]
        body = "\n".join(["[b]Keys[/]  (ctrl+p opens the command palette; esc closes)", "", *lines])
        with VerticalScroll(id="help"):
            yield Static(body)


class PlanScreen(ModalScreen[None]):
    """What a rehearsal measured and what the full run will cost at those rates."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "dismiss", "Close")]
    DEFAULT_CSS = """
    PlanScreen { align: center middle; }
    #plan { width: 100; max-width: 100%; height: auto; max-height: 90%; border: round $success;
            background: $surface; padding: 0 1; }
    """

    def __init__(self, title: str, lines: list[str]) -> None:
        super().__init__()
        self.title_text, self.lines = title, lines

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="plan"):
            yield Static(f"[b]{self.title_text}[/]  (esc closes)\n\n" + "\n".join(self.lines), markup=True,
                         id="plan-text")


class ConfirmQuit(ModalScreen[bool]):
    """Asked when work is running: quitting stops it cleanly (finished work is already stored)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Quit"),
        Binding("n,escape", "answer(False)", "Stay"),
    ]
    DEFAULT_CSS = """
    ConfirmQuit { align: center middle; }
    #confirm { grid-size: 2; grid-gutter: 1 2; grid-rows: auto 3; width: 64; height: auto;
               border: thick $warning; background: $surface; padding: 1 2; }
    #confirm Label { column-span: 2; width: 100%; }
    #confirm Button { width: 100%; }
    """

    def __init__(self, running: str) -> None:
        super().__init__()
        self.running = running

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(f"[b]{self.running}[/] is running. Quit? It stops after the item in flight; "
                        "everything finished is already stored, and training resumes from its last "
                        "checkpoint.")
            yield Button("Quit (y)", variant="error", id="yes")
            yield Button("Stay (n)", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
