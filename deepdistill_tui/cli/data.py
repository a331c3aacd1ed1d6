"""ingest, import, import-am and recipes: getting queries and released responses into the store."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, print_json, report_table, run_command


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
             ("duplicates skipped (first record kept)", report["duplicates"])]
    skipped = report.get("skipped") or {}
    rows += [(f"bad rows skipped: {reason}", n) for reason, n in sorted(skipped.items())]
    if report.get("already_imported"):
        rows.append(("sources already imported (not read again)", report["already_imported"]))
    if report.get("resumed"):
        rows.append(("sources resumed after their last committed row", report["resumed"]))
    rows.append(("responses/s", report["responses_per_s"]))
    console.print(report_table("Import", rows))
    for example in report.get("skipped_examples") or []:
        console.print(f"  [yellow]skipped[/] {example}", markup=True, highlight=False)


def print_data(console: Any, summary: dict[str, Any]) -> None:
    """What ingest and import-am report, whichever ran."""
    if "ingest" in summary:
        print_ingest(console, summary["ingest"])
    if "import_am" in summary:
        print_import(console, summary["import_am"])


def cmd_ingest(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline.params import IngestParams

    result = run_command(args, "ingest", IngestParams())
    if args.json:
        print_json(result.summary)
    else:
        print_data(console_for(), result.summary)
    return 0


def cmd_import_am(args: argparse.Namespace) -> int:
    return cmd_import(args, alias=True)


def parse_map(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    from deepdistill_tui.core.errors import InputError

    out = []
    for pair in pairs or []:
        key, sep, column = pair.partition("=")
        if not sep or not key or not column:
            raise InputError(f"--map {pair!r}: expected KEY=COLUMN (question=problem, scores=correct, ...)")
        out.append((key, column))
    return tuple(out)


def cmd_import(args: argparse.Namespace, alias: bool = False) -> int:
    from deepdistill_tui.core.pipeline.params import ImportParams

    # Without a recipe the paper's pass thresholds apply.
    recipe = load_recipe_arg(args) if getattr(args, "recipe", None) else None
    params = ImportParams(tuple(args.files), strict=args.strict, workers=args.workers) if alias else \
        ImportParams(tuple(args.files), args.format, parse_map(args.map), args.category, args.teacher,
                     args.strict, args.workers)
    result = run_command(args, "import-am" if alias else "import", params, recipe=recipe,
                         with_recipe=False)
    if args.json:
        print_json(result.summary["import_am"])
    else:
        print_import(console_for(), result.summary["import_am"])
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.recipe import available_recipes, load_recipe

    if args.show:
        print_json(load_recipe(args.show).model_dump(mode="json"))
        return 0
    for name in available_recipes():
        print(f"{name}: {' '.join(load_recipe(name).description.split())}")
    return 0
