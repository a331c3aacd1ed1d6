"""run (the stages in order) and the app."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store
from deepdistill_tui.cli.data import print_import, print_ingest
from deepdistill_tui.cli.training import print_evals
from deepdistill_tui.core.sample import in_flight_text


def _progress_text(event: dict[str, Any]) -> str | None:
    """One status line for the long stages' progress events, None for other events."""
    kind = event["event"]
    if kind == "sample_progress":
        return (f"sampling {event['teacher']}: {event['queries_done']}/{event['queries_total']} queries,"
                f" {event['tokens_per_s']:.0f} tok/s{in_flight_text(event)}")
    if kind == "grade_progress":
        return f"grading: {event['done']}/{event['total']}"
    if kind == "train_step":
        return f"training: step {event['step']}/{event['max_steps']}, loss {event['loss']:.4f}"
    if kind == "eval_progress":
        return f"evaluating {event['model']}: {event['done']}/{event['total']} problems"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline import parse_stages, run_pipeline

    recipe = load_recipe_arg(args)
    console = console_for()
    status = console.status("starting")

    def show(event: dict[str, Any]) -> None:
        kind = event["event"]
        line = _progress_text(event)
        if line is not None:
            status.update(line)
        elif kind == "stage_started":
            console.print(f"[bold]▶ {event['stage']}[/] (run {event['run_id']})")
        elif kind == "stage_skipped":
            console.print(f"[dim]· {event['stage']}: skipped, {event['reason']}[/]")
        elif kind == "stage_progress":
            console.print(f"  {event['message']}")
        elif kind == "stage_finished":
            console.print(f"[green]✔ {event['stage']}[/]")
            result = event["result"]
            if "ingest" in result:
                print_ingest(console, result["ingest"])
            if "import_am" in result:
                print_import(console, result["import_am"])
            if "evals" in result:
                print_evals(console, result["evals"])

    with open_store(args) as store, status:
        run_pipeline(store, recipe, parse_stages(args.stages), force=args.force, emit=show)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from deepdistill_tui.tui.app import DeepDistillApp

    recipe = load_recipe_arg(args)  # fail on a bad recipe before the screen is taken over
    DeepDistillApp(recipe=recipe, db_path=args.db).run()
    return 0
