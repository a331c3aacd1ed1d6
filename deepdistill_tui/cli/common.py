"""What every command shares: the recipe and store from the arguments, the stage runner, rich output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def console_for(stderr: bool = False) -> Any:
    """stdout normally; stderr when stdout carries --json output."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


DEFAULT_RECIPE = "tiny"


def positive_int(text: str) -> int:
    """argparse type for counts: ``--workers -1`` used to reach the pool and end in a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text} is not a count from 1 to 1000000")
    return value


def load_recipe_arg(args: argparse.Namespace) -> Any:
    from deepdistill_tui.core.grading.stage import kinds_of
    from deepdistill_tui.core.recipe import load_recipe, with_endpoints

    recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    if getattr(args, "endpoint", None):
        recipe = with_endpoints(recipe, args.endpoint)
    kinds_of(recipe.grading)  # names the registry checks, before any command writes anything
    return recipe


CREATING_STAGES = ("ingest", "import", "import-am", "run", "merge")
"""The commands that write data of their own and so may start a new store; every other one refuses a
missing --db rather than leave an empty store behind a typo."""


def open_store(args: argparse.Namespace, stage: str | None = None) -> Any:
    from deepdistill_tui.core.store.database import Store

    return Store(args.db, create=stage in CREATING_STAGES)


def run_command(args: argparse.Namespace, stage: str, params: Any, *, recipe: Any = None,
                stage_lines: bool = False, with_recipe: bool = True) -> Any:
    """parse -> params -> ``run_stage`` with a progress display; the stage's result. Progress goes to
    stderr when stdout carries --json."""
    from deepdistill_tui.cli.progress import Reporter
    from deepdistill_tui.core.pipeline.context import StageContext
    from deepdistill_tui.core.pipeline.runner import run_stage

    if recipe is None and with_recipe:
        recipe = load_recipe_arg(args)
    console = console_for(stderr=getattr(args, "json", False))
    with open_store(args, stage) as store, Reporter(console, stage_lines=stage_lines) as reporter:
        return run_stage(store, stage, recipe, params, StageContext(reporter, face="cli"))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def report_table(title: str, rows: Sequence[tuple[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table
