"""What every command shares: the recipe and store from the arguments, and rich output."""

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


def load_recipe_arg(args: argparse.Namespace) -> Any:
    from deepdistill_tui.core.recipe import load_recipe, with_endpoints

    recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    if getattr(args, "endpoint", None):
        recipe = with_endpoints(recipe, args.endpoint)
    return recipe


def open_store(args: argparse.Namespace) -> Any:
    from deepdistill_tui.core.store import Store

    return Store(args.db)


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
