"""train and eval."""

from __future__ import annotations

import argparse
from typing import Any

from deepdistill_tui.cli.common import console_for, print_json, report_table, run_command


def cmd_train(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline.params import TrainParams
    from deepdistill_tui.core.train import TrainResult

    done = run_command(args, "train", TrainParams(args.selection, args.fresh))
    if args.json:
        print_json(done.summary)
    else:
        result = done.typed(TrainResult)
        rows = [("run_id", result.run_id)] + [(k, result.worker[k]) for k in (
            "backend", "model_loaded", "steps", "first_loss", "last_loss", "output", "merged", "gguf")
            if k in result.worker]
        console_for().print(report_table("Training", rows))
    return 0


def print_evals(console: Any, rows: list[dict[str, Any]]) -> None:
    """One row per evaluated model: pass@1 and the difference from the base with their intervals; per
    category and the verdicts in words below. Fits 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table("model", "n x k", "pass@1 [95% CI]", "vs base [95% CI]", box=box.SIMPLE_HEAD,
                  title="Evaluation (held-out split)", title_justify="left")
    for column in table.columns:
        column.no_wrap = True
    for r in rows:
        d = r.get("delta_vs_base")
        table.add_row(r["model"], f"{r['problems']} x {r['k']}", _pct(r),
                      _delta(d) if d and d.get("problems") else "-")
    console.print(table)
    for r in rows:
        cats = ", ".join(f"{c} {_pct(v)}" for c, v in sorted(r["by_category"].items()))
        console.print(f"{r['model']}: {cats}")
        d = r.get("delta_vs_base")
        if d and d.get("problems"):
            console.print(f"  {d['verdict']}.")
            if d["problems"] != r["problems"]:
                console.print(f"  [yellow]compared with the base on the {d['problems']} problems both "
                              "answered[/]")
        if r.get("not_graded"):
            console.print(f"  [yellow]{r['not_graded']} answers were not graded (no sandbox ran their code)"
                          " and count as failures[/]")
        if not r["engine"].startswith("llama.cpp"):
            console.print(f"  [yellow]answered by {r['engine']}[/]")
        elif rows and r is not rows[0] and r["engine"] != rows[0]["engine"]:
            console.print(f"  [yellow]formats differ: {rows[0]['model']} as {rows[0]['engine']}, "
                          f"{r['model']} as {r['engine']}[/]")


def _pct(r: dict[str, Any]) -> str:
    from deepdistill_tui.core.evaluation.intervals import Interval

    return Interval.of_rate(r).rate()


def _delta(d: dict[str, Any]) -> str:
    from deepdistill_tui.core.evaluation.intervals import Interval

    return Interval.of_difference(d).points()


def cmd_eval(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.evaluation.evaluate import EvalResult
    from deepdistill_tui.core.pipeline.params import EvalParams

    rows = run_command(args, "eval", EvalParams(args.model)).typed(EvalResult).evals
    if args.json:
        print_json(rows)
    else:
        print_evals(console_for(), rows)
    return 0
