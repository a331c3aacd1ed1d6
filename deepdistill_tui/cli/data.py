"""ingest, import-am and recipes: getting queries into the store."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, open_store, print_json, report_table


def print_ingest(console: Any, report: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [("read", report["read"])]
    rows += [(f"  - {rule}", n) for rule, n in report["removed"].items()]
    rows += [("kept", report["kept"]), ("new in store", report["inserted"]),
             ("already in store", report["already_present"])]
    rows += [(f"  {split}", n) for split, n in sorted(report["by_split"].items())]
    rows += [(f"  {cat}", n) for cat, n in sorted(report["by_category"].items())]
    rows.append(("seconds", report["seconds"]))
    console.print(report_table("Ingest", rows))


def print_import(console: Any, report: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [(path, n) for path, n in report["per_file"].items()]
    rows += [("responses", report["responses"]), ("new queries", report["new_queries"]),
             ("duplicates skipped (first record kept)", report["duplicates"]),
             ("responses/s", report["responses_per_s"])]
    console.print(report_table("Import (AM format)", rows))


def cmd_ingest(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline import parse_stages, run_stage

    recipe = load_recipe_arg(args)
    with open_store(args) as store:
        result = run_stage(store, parse_stages("ingest")[0], recipe)
    if args.json:
        print_json(result)
        return 0
    console = console_for()
    if "ingest" in result:
        print_ingest(console, result["ingest"])
    if "import_am" in result:
        print_import(console, result["import_am"])
    return 0


def cmd_import_am(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.am_import import import_am

    thresholds = dict(load_recipe_arg(args).grading.thresholds) if args.recipe else None
    with open_store(args) as store, store.recorded_run("import-am", args={"files": args.files}) as run:
        report = run["result"] = import_am(store, args.files, thresholds=thresholds).as_dict()
    if args.json:
        print_json(report)
    else:
        print_import(console_for(), report)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.recipe import available_recipes, load_recipe

    if args.show:
        print_json(load_recipe(args.show).model_dump(mode="json"))
        return 0
    for name in available_recipes():
        print(f"{name}: {' '.join(load_recipe(name).description.split())}")
    return 0
