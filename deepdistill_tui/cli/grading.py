"""grade and grade-file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store, print_json, report_table


def _grade_progress(console: Any) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
    task = progress.add_task("grade", total=None, info="")

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "grade_started":
            progress.update(task, total=event["total"])
        elif event["event"] == "grade_waiting":
            progress.console.print(f"[yellow]{event['message']}[/]")
        elif event["event"] == "grade_progress":
            info = ", ".join(f"{k} {v}" for k, v in sorted(event.get("by_status", {}).items()))
            progress.update(task, completed=event["done"], total=event["total"], info=info)

    return progress, on_event


def cmd_grade(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.grade import grade_store

    recipe = load_recipe_arg(args)
    console = console_for(stderr=args.json)
    progress, on_event = _grade_progress(console)
    with (open_store(args) as store, store.recorded_run("grade", recipe.name, recipe.to_json()) as run,
          progress):
        result = run["result"] = grade_store(store, recipe, emit=on_event, workers=args.workers)
    if args.json:
        print_json(result)
    else:
        rows = [("graded", result["graded"]), ("passed", result["passed"])]
        rows += [(f"  {k}", v) for k, v in sorted(result["by_status"].items())]
        console.print(report_table("Grading", rows))
    return 0


def cmd_grade_file(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepdistill_tui.core.grade import grade_file, judge_factory
    from deepdistill_tui.core.recipe import GradingConfig

    recipe = load_recipe_arg(args) if args.recipe else None
    cfg = recipe.grading if recipe else GradingConfig()
    result = grade_file(Path(args.input), Path(args.output), cfg, workers=args.workers,
                        judge=judge_factory(recipe) if recipe else None)
    print(json.dumps(result, sort_keys=True))
    return 0
