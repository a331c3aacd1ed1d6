"""train and eval."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store, print_json, report_table
from deepdistill_tui.core.errors import DeepDistillError


def cmd_train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from deepdistill_tui.core.train import train

    recipe = load_recipe_arg(args)
    console = console_for(stderr=args.json)
    progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}"),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("train", total=None, loss="-", lr="-")

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "train_run":
            progress.console.print(f"run {event['run_id']} in {event['run_dir']}")
        elif kind == "train_resuming":
            progress.console.print(f"[yellow]resuming run {event['run_id']}[/]")
        elif kind == "train_started":
            resume = f", resuming from {event['resume_from']}" if event["resume_from"] else ""
            progress.console.print(f"backend {event['backend']}, {event['examples']} examples{resume}")
        elif kind == "train_step":
            progress.update(task, completed=event["step"], total=event["max_steps"],
                            loss=f"{event['loss']:.4f}", lr=f"{event['learning_rate'] or 0:.2e}")

    with open_store(args) as store, progress:
        result = train(store, recipe, args.selection, emit=on_event, fresh=args.fresh)
    if args.json:
        print_json(result)
    else:
        console.print(report_table("Training", [(k, result[k]) for k in (
            "run_id", "backend", "steps", "first_loss", "last_loss", "output", "merged", "gguf")
            if k in result]))
    return 0


def print_evals(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    cats = sorted({c for r in rows for c in r["by_category"]})
    table = Table("model", "engine", "k", "problems", "pass@1 [95% CI]", "vs base [95% CI]", *cats,
                  title="Evaluation (held-out split)", title_justify="left")
    for r in rows:
        d = r.get("delta_vs_base")
        table.add_row(r["model"], r["engine"].split(" ")[0], str(r["k"]), str(r["problems"]), _pct(r),
                      _delta(d) if d and d.get("problems") else "-",
                      *(_pct(r["by_category"][c]) if c in r["by_category"] else "-" for c in cats))
    console.print(table)
    for r in rows:
        d = r.get("delta_vs_base")
        if d and d.get("problems"):
            console.print(f"{r['model']}: {d['verdict']}.")
        if not r["engine"].startswith("llama.cpp"):
            console.print(f"[yellow]{r['model']}: answered by {r['engine']}[/]")


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['pass_at_1']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"


def _delta(d: dict[str, Any]) -> str:
    return f"{100 * d['delta']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def cmd_eval(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.evaluate import comparison, evaluate, latest_trained_run

    recipe = load_recipe_arg(args)
    with open_store(args) as store:
        model = args.model
        if model == "latest":
            model = latest_trained_run(store, recipe)
            if model is None:
                raise DeepDistillError(f"no finished training run for recipe {recipe.name}")
        with store.recorded_run("eval", recipe.name, recipe.to_json(), {"model": model}) as run:
            run["result"] = evaluate(store, recipe, model)
        rows = comparison(store, recipe)
    if args.json:
        print_json(rows)
    else:
        print_evals(console_for(), rows)
    return 0
