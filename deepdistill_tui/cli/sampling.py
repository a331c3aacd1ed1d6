"""sample: the teachers' missing passes, with a progress bar per teacher."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store, print_json, report_table
from deepdistill_tui.core.sample import in_flight_text


def _sample_progress(console: Any) -> tuple[Any, Any]:
    """A rich progress display fed by the sampler's events: one bar per teacher."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)
    tasks: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        kind, name = event["event"], event.get("teacher", "")
        if kind == "sample_started":
            tasks[name] = progress.add_task(name, total=event["queries_total"], rate="")
        elif kind == "sample_progress":
            progress.update(tasks[name], completed=event["queries_done"],
                            rate=f"{event['tokens_per_s']:.0f} tok/s{in_flight_text(event)}")
        elif kind == "sample_failed":
            progress.console.print(f"[red]✘ {event['error']}[/]")
        elif kind == "sample_waiting":
            progress.console.print(f"[yellow]{event['message']}[/]")

    return progress, on_event


def cmd_sample(args: argparse.Namespace) -> int:
    import threading

    from deepdistill_tui.core.sample import sample

    recipe = load_recipe_arg(args)
    if args.teacher:
        recipe.teacher(args.teacher)  # a clear error for an unknown name before any model loads
    console = console_for(stderr=args.json)
    progress, on_event = _sample_progress(console)
    stop = threading.Event()
    with open_store(args) as store:
        run_id = store.start_run("sample", recipe.name, recipe.to_json(),
                                 {"teacher": args.teacher, "limit": args.limit})
        try:
            with progress:
                reports = [r.as_dict() for r in sample(store, recipe, teacher_name=args.teacher,
                                                       limit=args.limit, emit=on_event, stop=stop)]
        except KeyboardInterrupt:
            stop.set()
            store.finish_run(run_id, "interrupted")
            raise
        failed = [r for r in reports if r["error"]]
        store.finish_run(run_id, "failed" if failed else "ok", reports,
                         error="; ".join(r["error"] for r in failed) or None)
    if args.json:
        print_json(reports)
    else:
        rows = [(r["teacher"], f"{r['samples']} samples, {r['tokens']} tokens, "
                 f"{r['tokens_per_s'] or 0} tok/s" + (f", {len(r['skipped'])} skipped" if r["skipped"]
                                                      else "")) for r in reports if not r["error"]]
        console.print(report_table("Sampling", rows))
    for r in failed:
        print(f"deepdistill-tui: error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
