"""stats, select, selections and export."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from deepdistill_tui.cli.common import (
    console_for,
    load_recipe_arg,
    open_store,
    print_json,
    report_table,
    run_command,
)


def _bar(count: int, most: int, width: int = 30) -> str:
    return "█" * (round(width * count / most) if most else 0)


def _histogram_table(title: str, label: str, rows: list[tuple[str, int]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(label, justify="right")
    table.add_column("queries", justify="right")
    table.add_column("")
    most = max((n for _, n in rows), default=0)
    for key, n in rows:
        table.add_row(key, str(n), _bar(n, most))
    return table


def _cv_labels(edges: list[float | None]) -> list[str]:
    return [f"{lo:g}-{hi:g}" if hi is not None else f">{lo:g}"
            for lo, hi in itertools.pairwise(edges) if lo is not None]


def _print_stats(console: Any, stats: dict[str, Any]) -> None:
    for name in stats.get("single_response_teachers", []):
        console.print(f"[yellow]{name}: one verified response per query (released single answers): its "
                      "pass rates below are single verdicts, not rates, and it has no CV[/]")
    for cat, teachers in sorted(stats["categories"].items()):
        for name, e in teachers.items():
            mean = e["mean_verify_score"]
            title = (f"{cat} · {name}: {e['queries']} queries, {e['responses']} graded responses, "
                     f"mean score {'-' if mean is None else round(mean, 3)}, {e['ungraded']} ungraded, "
                     f"{e['missing_passes']} passes missing")
            rows = [(f"{h['pass_rate']:.2f}", h["queries"]) for h in e["pass_rate_histogram"]]
            console.print(_histogram_table(title, "pass rate", rows))
            if name == stats["training_teacher"]:
                cv = e["cv_histogram"]
                title = f"{cat} · {name}: CV ({cv['zero']} at 0, {cv['undefined']} undefined: all wrong)"
                rows = list(zip(_cv_labels(cv["edges"]), cv["counts"], strict=True))
                console.print(_histogram_table(title, "CV", rows))


def cmd_stats(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.difficulty.stats import compute_stats, per_query

    recipe = load_recipe_arg(args)
    with open_store(args) as store:
        stats = compute_stats(store, recipe)
        if args.per_query:
            stats["per_query"] = per_query(store, recipe)
    if args.json:
        print_json(stats)
    else:
        _print_stats(console_for(), stats)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.difficulty.selection import SelectResult
    from deepdistill_tui.core.pipeline.params import SelectParams

    done = run_command(args, "select", SelectParams(args.name))
    if args.json:
        print_json(done.summary["selections"])
        return 0
    console = console_for()
    for sel in done.typed(SelectResult).selections:
        rows: list[tuple[str, Any]] = [(f"queries: {b}", n) for b, n in sel.counts["queries"].items()]
        rows += [("responses kept", sel.n_members), ("tokens (approx.)", sel.n_tokens)]
        rows += [(f"  {c}", n) for c, n in sorted(sel.counts["by_category"].items())]
        console.print(report_table(f"Selection {sel.name}", rows))
    return 0


def cmd_selections(args: argparse.Namespace) -> int:
    from rich.table import Table

    from deepdistill_tui.core.difficulty.selection import list_selections

    with open_store(args) as store:
        rows = list_selections(store)
    if args.json:
        print_json(rows)
        return 0
    table = Table("name", "stage", "responses", "tokens", "seed", "queries by branch")
    for r in rows:
        branches = ", ".join(f"{k} {v}" for k, v in r["counts"]["queries"].items())
        table.add_row(r["name"], str(r["rule"]["stage"]), str(r["members"]), str(r["tokens"]),
                      str(r["seed"]), branches)
    console_for().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.difficulty.export import ExportResult
    from deepdistill_tui.core.pipeline.params import ExportParams

    done = run_command(args, "export", ExportParams(args.selection, args.format, args.out))
    result = done.typed(ExportResult)
    print(f"wrote {result.records} records to {result.path} ({result.format})")
    return 0
