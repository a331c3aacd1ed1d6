"""run (the stages in order), ablate (the paper's arms) and the app."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store, print_json
from deepdistill_tui.cli.data import print_data
from deepdistill_tui.cli.training import print_evals


def cmd_run(args: argparse.Namespace) -> int:
    from deepdistill_tui.cli.progress import Reporter
    from deepdistill_tui.core.pipeline.context import StageContext
    from deepdistill_tui.core.pipeline.events import Event, StageFinished
    from deepdistill_tui.core.pipeline.registry import parse_stages
    from deepdistill_tui.core.pipeline.runner import run_pipeline

    recipe = load_recipe_arg(args)
    stages = parse_stages(args.stages)
    console = console_for()
    if args.stand_ins and not args.rehearse:
        from deepdistill_tui.core.errors import DeepDistillError

        raise DeepDistillError("--stand-ins replaces the recipe's models and data for a rehearsal: "
                               "give it with --rehearse")
    if args.rehearse:
        return rehearse(args, recipe, console)

    with open_store(args, "run") as store, Reporter(console, stage_lines=True) as reporter:
        def show(event: Event) -> None:
            reporter(event)
            if isinstance(event, StageFinished):
                reporter.line(f"[green]✔ {event.stage}[/]")
                print_data(reporter.progress.console, event.summary)
                if "evals" in event.summary:
                    print_evals(reporter.progress.console, event.summary["evals"])

        run_pipeline(store, recipe, stages, force=args.force, ctx=StageContext(show, face="cli"))
    return 0


def rehearse(args: argparse.Namespace, recipe: Any, console: Any) -> int:
    """`run --rehearse`: the capped stages in a fresh store beside --db, then the full run's plan."""
    from pathlib import Path

    from deepdistill_tui.cli.progress import Reporter
    from deepdistill_tui.core.errors import DeepDistillError
    from deepdistill_tui.core.pipeline import rehearsal
    from deepdistill_tui.core.pipeline.context import StageContext

    if args.stages or args.force:
        raise DeepDistillError("--rehearse runs every stage afresh: give it without --stages or --force")
    db = rehearsal.rehearsal_store(Path(args.db))
    caps = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rehearsal.CAPS.items())
    console.print(f"[b]Rehearsal[/] of {recipe.name} in {db} (capped: {caps})")
    with Reporter(console, stage_lines=True) as reporter:
        def show(event: Any) -> None:
            reporter(event)
            if type(event).__name__ == "StageFinished":
                reporter.line(f"[green]✔ {event.stage}[/]")

        _, plan = rehearsal.rehearse_beside(Path(args.db), recipe, StageContext(show, face="cli"),
                                            args.stand_ins)
    console.print(f"[b]The full run of {recipe.name}[/], at the rates measured here:")
    for line in rehearsal.render(plan):
        console.print(f"  {line}", highlight=False, markup=False)
    return 0


NEXT_COMMANDS = {
    "ingest": "ingest --recipe {r}", "sample": "sample --recipe {r}", "grade": "grade --recipe {r}",
    "select": "select --recipe {r} --name {name}", "train": "train --recipe {r} --selection {selection}",
    "eval": "eval --recipe {r} --model latest", "done": "ablate --recipe {r}",
}


def cmd_status(args: argparse.Namespace) -> int:
    """Where the store stands and the one next step, the same as the app's Overview says it."""
    from pathlib import Path

    from deepdistill_tui.core.pipeline.overview import overview

    recipe = load_recipe_arg(args)
    selection = None
    if not Path(args.db).exists():  # nothing to open, and nothing is created: the next step is plain
        counts: dict[str, int] = {}
        stage, why = "ingest", f"No store at {args.db} yet: ingest the recipe's queries."
    else:
        with open_store(args) as store:
            ov = overview(store, recipe)
            selection = store.scalar("SELECT name FROM selections ORDER BY created_at DESC LIMIT 1")
        counts, (stage, why) = ov.counts, ov.next_step
    command = "deepdistill-tui " + NEXT_COMMANDS[stage].format(
        r=args.recipe or recipe.name, name=recipe.name, selection=selection or recipe.name)
    if args.json:
        print_json({"db": args.db, "recipe": recipe.name, "counts": counts,
                    "next": {"stage": stage, "why": why, "command": command}})
        return 0
    console = console_for()
    if counts:
        console.print("  ".join(f"{k} {v}" for k, v in counts.items()))
    console.print(f"[b]Next[/]  {why}\n      {command}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from deepdistill_tui.cli.common import run_command
    from deepdistill_tui.core.evaluation.ablate import AblateResult, markdown_report, parse_arms
    from deepdistill_tui.core.pipeline.params import AblateParams

    recipe = load_recipe_arg(args)
    arms = tuple(parse_arms(args.arms))
    done = run_command(args, "ablate", AblateParams(arms), recipe=recipe, stage_lines=True)
    result = done.typed(AblateResult)
    rows = result.arms
    if args.report:
        from pathlib import Path

        arms_flag = f" --arms {args.arms}" if args.arms else ""
        command = f"deepdistill-tui ablate --recipe {recipe.name}{arms_flag}"
        Path(args.report).write_text(markdown_report(recipe, rows, command, result.contrasts))
    if args.json:
        print_json(rows)
    else:
        print_ablation(console_for(), rows, result.contrasts)
    return 0


def print_ablation(console: Any, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    from deepdistill_tui.core.evaluation.ablate import contrast_text, table_cells

    table = Table("arm", "n", "tokens", "steps", "loss", "pass@1 [95% CI]", "vs base [95% CI]",
                  box=box.SIMPLE_HEAD, pad_edge=False, title="Ablation (held-out split)",
                  title_justify="left")
    for column in table.columns:
        column.no_wrap = True
    for r in rows:
        table.add_row(*table_cells(r))
    console.print(table)
    for r in rows:
        d = r.get("delta_vs_base") or {}
        if d.get("problems"):
            console.print(f"{r['arm']}: {d['verdict']}.")
    for c in pairs:
        console.print(f"{contrast_text(c)}.")


def cmd_app(args: argparse.Namespace) -> int:
    from deepdistill_tui.tui.app import DeepDistillApp

    recipe = load_recipe_arg(args)  # fail on a bad recipe before the screen is taken over
    DeepDistillApp(recipe=recipe, db_path=args.db).run()
    return 0
