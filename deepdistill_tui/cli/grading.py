"""grade and grade-file."""

from __future__ import annotations

import argparse
import json

from deepdistill_tui.cli.common import console_for, load_recipe_arg, print_json, report_table, run_command


def cmd_grade(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.grading.stage import GradeResult
    from deepdistill_tui.core.pipeline.params import GradeParams

    done = run_command(args, "grade", GradeParams(args.workers))
    if args.json:
        print_json(done.summary)
    else:
        result = done.typed(GradeResult)
        rows = [("graded", result.graded), ("passed", result.passed)]
        rows += [(f"  {k}", v) for k, v in sorted(result.by_status.items())]
        console_for().print(report_table("Grading", rows))
    return 0


def cmd_grade_file(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepdistill_tui.core.grading.stage import grade_file, judge_factory
    from deepdistill_tui.core.recipe import GradingConfig

    recipe = load_recipe_arg(args) if args.recipe else None
    cfg = recipe.grading if recipe else GradingConfig()
    result = grade_file(Path(args.input), Path(args.output), cfg, workers=args.workers,
                        judge=judge_factory(recipe) if recipe else None)
    print(json.dumps(result, sort_keys=True))
    return 0
