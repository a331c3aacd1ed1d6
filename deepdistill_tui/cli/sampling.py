"""sample: the teachers' missing passes, with a progress bar per teacher."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, load_recipe_arg, print_json, report_table, run_command


def _print_reports(reports: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(reports)
        return
    rows = [(r["teacher"], f"{r['samples']} samples, {r['tokens']} tokens, {r['tokens_per_s'] or 0} tok/s"
             + (f", {len(r['skipped'])} skipped" if r["skipped"] else "")) for r in reports if not r["error"]]
    if rows:
        console_for().print(report_table("Sampling", rows))


def cmd_sample(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.errors import StageError
    from deepdistill_tui.core.pipeline.params import SampleParams

    recipe = load_recipe_arg(args)
    if args.teacher:
        recipe.teacher(args.teacher)  # a clear error for an unknown name before any model loads
    try:
        result = run_command(args, "sample", SampleParams(args.teacher, args.limit), recipe=recipe)
    except StageError as exc:  # the teachers that did sample are reported, then the error
        _print_reports(list(exc.summary.get("teachers", [])), args.json)
        raise
    _print_reports(result.summary["teachers"], args.json)
    return 0
