"""The headless command line: a thin face over deepdistill_tui.core.

    deepdistill-tui --recipe tiny              # the terminal app
    deepdistill-tui run --recipe tiny          # the whole pipeline, headless
    deepdistill-tui ingest --recipe tiny       # one stage
    deepdistill-tui import-am math_r1_1pass.jsonl ...

Every command takes --db PATH (default ./deepdistill.db). Errors print one line and exit 2.
Heavy imports (torch, transformers, textual) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deepdistill_tui import __version__
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.store import DEFAULT_DB

Handler = Callable[[argparse.Namespace], int]


def _console(stderr: bool = False) -> Any:
    """stdout normally; stderr when stdout carries --json output."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _load(args: argparse.Namespace) -> Any:
    from deepdistill_tui.core.recipe import load_recipe, with_endpoints

    recipe = load_recipe(args.recipe)
    if getattr(args, "endpoint", None):
        recipe = with_endpoints(recipe, args.endpoint)
    return recipe


def _store(args: argparse.Namespace) -> Any:
    from deepdistill_tui.core.store import Store

    return Store(args.db)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _report_table(title: str, rows: Sequence[tuple[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def _print_ingest(console: Any, report: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [("read", report["read"])]
    rows += [(f"  - {rule}", n) for rule, n in report["removed"].items()]
    rows += [("kept", report["kept"]), ("new in store", report["inserted"]),
             ("already in store", report["already_present"])]
    rows += [(f"  {split}", n) for split, n in sorted(report["by_split"].items())]
    rows += [(f"  {cat}", n) for cat, n in sorted(report["by_category"].items())]
    rows.append(("seconds", report["seconds"]))
    console.print(_report_table("Ingest", rows))


def _print_import(console: Any, report: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [(path, n) for path, n in report["per_file"].items()]
    rows += [("responses", report["responses"]), ("new queries", report["new_queries"]),
             ("responses/s", report["responses_per_s"])]
    console.print(_report_table("Import (AM format)", rows))


# ------------------------------------------------------------------ commands


def cmd_ingest(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline import parse_stages, run_stage

    recipe = _load(args)
    with _store(args) as store:
        result = run_stage(store, parse_stages("ingest")[0], recipe)
    if args.json:
        _print_json(result)
        return 0
    console = _console()
    if "ingest" in result:
        _print_ingest(console, result["ingest"])
    if "import_am" in result:
        _print_import(console, result["import_am"])
    return 0


def cmd_import_am(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.am_import import import_am

    thresholds = dict(_load(args).grading.thresholds) if args.recipe else None
    with _store(args) as store, store.recorded_run("import-am", args={"files": args.files}) as run:
        report = run["result"] = import_am(store, args.files, thresholds=thresholds).as_dict()
    if args.json:
        _print_json(report)
    else:
        _print_import(_console(), report)
    return 0


def _progress_text(event: dict[str, Any]) -> str | None:
    """One status line for the long stages' progress events, None for other events."""
    kind = event["event"]
    if kind == "sample_progress":
        return (f"sampling {event['teacher']}: {event['queries_done']}/{event['queries_total']} queries,"
                f" {event['tokens_per_s']:.0f} tok/s")
    if kind == "grade_progress":
        return f"grading: {event['done']}/{event['total']}"
    if kind == "train_step":
        return f"training: step {event['step']}/{event['max_steps']}, loss {event['loss']:.4f}"
    if kind == "eval_progress":
        return f"evaluating {event['model']}: {event['done']}/{event['total']} problems"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.pipeline import parse_stages, run_pipeline

    recipe = _load(args)
    console = _console()
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
                _print_ingest(console, result["ingest"])
            if "import_am" in result:
                _print_import(console, result["import_am"])
            if "evals" in result:
                _print_evals(console, result["evals"])

    with _store(args) as store, status:
        run_pipeline(store, recipe, parse_stages(args.stages), force=args.force, emit=show)
    return 0


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
                            rate=f"{event['tokens_per_s']:.0f} tok/s")
        elif kind == "sample_failed":
            progress.console.print(f"[red]✘ {event['error']}[/]")
        elif kind == "sample_waiting":
            progress.console.print(f"[yellow]{event['message']}[/]")

    return progress, on_event


def cmd_sample(args: argparse.Namespace) -> int:
    import threading

    from deepdistill_tui.core.sample import sample

    recipe = _load(args)
    if args.teacher:
        recipe.teacher(args.teacher)  # a clear error for an unknown name before any model loads
    console = _console(stderr=args.json)
    progress, on_event = _sample_progress(console)
    stop = threading.Event()
    with _store(args) as store:
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
        _print_json(reports)
    else:
        rows = [(r["teacher"], f"{r['samples']} samples, {r['tokens']} tokens, "
                 f"{r['tokens_per_s'] or 0} tok/s" + (f", {len(r['skipped'])} skipped" if r["skipped"]
                                                      else "")) for r in reports if not r["error"]]
        console.print(_report_table("Sampling", rows))
    for r in failed:
        print(f"deepdistill-tui: error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


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
    from deepdistill_tui.core.stats import compute_stats, per_query

    recipe = _load(args)
    with _store(args) as store:
        stats = compute_stats(store, recipe)
        if args.per_query:
            stats["per_query"] = per_query(store, recipe)
    if args.json:
        _print_json(stats)
    else:
        _print_stats(_console(), stats)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.select import run_selection

    recipe = _load(args)
    with _store(args) as store, store.recorded_run("select", recipe.name, recipe.to_json(),
                                                   {"name": args.name}) as run:
        result: list[dict[str, Any]] = [
            {"name": s.name, "members": len(s.members), "tokens": s.n_tokens, "counts": s.counts}
            for s in run_selection(store, recipe, args.name)]
        run["result"] = result
    if args.json:
        _print_json(result)
        return 0
    console = _console()
    for r in result:
        rows: list[tuple[str, Any]] = [(f"queries: {b}", n) for b, n in r["counts"]["queries"].items()]
        rows += [("responses kept", r["members"]), ("tokens (approx.)", r["tokens"])]
        rows += [(f"  {c}", n) for c, n in sorted(r["counts"]["by_category"].items())]
        console.print(_report_table(f"Selection {r['name']}", rows))
    return 0


def cmd_selections(args: argparse.Namespace) -> int:
    from rich.table import Table

    from deepdistill_tui.core.select import list_selections

    with _store(args) as store:
        rows = list_selections(store)
    if args.json:
        _print_json(rows)
        return 0
    table = Table("name", "stage", "responses", "tokens", "seed", "queries by branch")
    for r in rows:
        branches = ", ".join(f"{k} {v}" for k, v in r["counts"]["queries"].items())
        table.add_row(r["name"], str(r["rule"]["stage"]), str(r["members"]), str(r["tokens"]),
                      str(r["seed"]), branches)
    _console().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.export import export

    recipe = _load(args)
    with _store(args) as store:
        n = export(store, recipe, args.selection, args.format, args.out)
    print(f"wrote {n} records to {args.out} ({args.format})")
    return 0


def _grade_progress(console: Any) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
    task = progress.add_task("grade", total=None, info="")

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "grade_started":
            progress.update(task, total=event["total"])
        elif event["event"] == "grade_progress":
            info = ", ".join(f"{k} {v}" for k, v in sorted(event.get("by_status", {}).items()))
            progress.update(task, completed=event["done"], total=event["total"], info=info)

    return progress, on_event


def cmd_grade(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.grade import grade_store

    recipe = _load(args)
    console = _console(stderr=args.json)
    progress, on_event = _grade_progress(console)
    with (_store(args) as store, store.recorded_run("grade", recipe.name, recipe.to_json()) as run,
          progress):
        result = run["result"] = grade_store(store, recipe, emit=on_event, workers=args.workers)
    if args.json:
        _print_json(result)
    else:
        rows = [("graded", result["graded"]), ("passed", result["passed"])]
        rows += [(f"  {k}", v) for k, v in sorted(result["by_status"].items())]
        console.print(_report_table("Grading", rows))
    return 0


def cmd_grade_file(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepdistill_tui.core.grade import grade_file, judge_factory
    from deepdistill_tui.core.recipe import GradingConfig

    recipe = _load(args) if args.recipe else None
    cfg = recipe.grading if recipe else GradingConfig()
    result = grade_file(Path(args.input), Path(args.output), cfg, workers=args.workers,
                        judge=judge_factory(recipe) if recipe else None)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from deepdistill_tui.core.train import train

    recipe = _load(args)
    console = _console(stderr=args.json)
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

    with _store(args) as store, progress:
        result = train(store, recipe, args.selection, emit=on_event, fresh=args.fresh)
    if args.json:
        _print_json(result)
    else:
        console.print(_report_table("Training", [(k, result[k]) for k in (
            "run_id", "backend", "steps", "first_loss", "last_loss", "output", "merged", "gguf")
            if k in result]))
    return 0


def _print_evals(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    cats = sorted({c for r in rows for c in r["by_category"]})
    table = Table("model", "k", "queries", "pass@1", *cats, title="Evaluation (held-out split)",
                  title_justify="left")
    for r in rows:
        table.add_row(r["model"], str(r["k"]), str(r["queries"]), f"{100 * r['pass_at_1']:.1f}%",
                      *(f"{100 * r['by_category'][c]:.1f}%" if c in r["by_category"] else "-"
                        for c in cats))
    console.print(table)


def cmd_eval(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.evaluate import comparison, evaluate, latest_trained_run

    recipe = _load(args)
    with _store(args) as store:
        model = args.model
        if model == "latest":
            model = latest_trained_run(store, recipe)
            if model is None:
                raise DeepDistillError(f"no finished training run for recipe {recipe.name}")
        with store.recorded_run("eval", recipe.name, recipe.to_json(), {"model": model}) as run:
            run["result"] = evaluate(store, recipe, model)
        rows = comparison(store, recipe)
    if args.json:
        _print_json(rows)
    else:
        _print_evals(_console(), rows)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from deepdistill_tui.core.recipe import available_recipes, load_recipe

    if args.show:
        _print_json(load_recipe(args.show).model_dump(mode="json"))
        return 0
    for name in available_recipes():
        print(f"{name}: {' '.join(load_recipe(name).description.split())}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from deepdistill_tui.tui.app import DeepDistillApp

    recipe = _load(args)  # fail on a bad recipe before the screen is taken over
    DeepDistillApp(recipe=recipe, db_path=args.db).run()
    return 0


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=DEFAULT_DB, metavar="PATH",
                        help=f"SQLite database (default: ./{DEFAULT_DB})")
    with_recipe = argparse.ArgumentParser(add_help=False)
    with_recipe.add_argument("--recipe", default="tiny", metavar="NAME|PATH",
                             help="recipes/NAME.yaml or a YAML file (default: tiny)")

    parser = argparse.ArgumentParser(
        prog="deepdistill-tui", parents=[common, with_recipe],
        description="Difficulty-graded reasoning data and SFT (DeepDistill), at home. "
                    "Without a command: the terminal app.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(handler=cmd_app)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common, with_recipe], help="run the pipeline's stages in order")
    p.add_argument("--stages", help="comma-separated subset of the stages (default: all)")
    p.add_argument("--force", action="store_true", help="re-run stages that already succeeded")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("ingest", parents=[common, with_recipe], help="ingest the recipe's queries")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("sample", parents=[common, with_recipe],
                       help="generate the missing passes of every (query, teacher)")
    p.add_argument("--teacher", metavar="NAME", help="only this teacher")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N training queries")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--endpoint", action="append", metavar="NAME=URL",
                   help="serve teacher NAME from this OpenAI-compatible URL (repeatable)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("grade", parents=[common, with_recipe],
                       help="a verify_score for every ungraded sample")
    p.add_argument("--workers", type=int, metavar="N", help="grading processes (default: all cores)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--endpoint", action="append", metavar="NAME=URL",
                   help="the judge teacher NAME's OpenAI-compatible URL (repeatable)")
    p.set_defaults(handler=cmd_grade)

    p = sub.add_parser("grade-file", help="grade JSONL records from anywhere (no database)")
    p.add_argument("--input", required=True, metavar="IN.jsonl")
    p.add_argument("--output", required=True, metavar="OUT.jsonl")
    p.add_argument("--recipe", default=None, metavar="NAME|PATH",
                   help="thresholds, timeouts and judge from this recipe (default: the paper's)")
    p.add_argument("--workers", type=int, metavar="N")
    p.set_defaults(handler=cmd_grade_file)

    p = sub.add_parser("stats", parents=[common, with_recipe],
                       help="pass-rate and CV histograms per category and teacher")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (docs/STATS.md)")
    p.add_argument("--per-query", action="store_true",
                   help="with --json: every query's pass rates and CV too")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("select", parents=[common, with_recipe],
                       help="Algorithm 1 (and Stage II when enabled) into a named selection")
    p.add_argument("--name", required=True, help="selection name (Stage II is stored as NAME-stage2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_select)

    p = sub.add_parser("selections", parents=[common], help="list the stored selections")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_selections)

    p = sub.add_parser("export", parents=[common, with_recipe],
                       help="a selection as chat-format records (jsonl, parquet or a datasets dataset)")
    p.add_argument("--selection", required=True, metavar="NAME")
    p.add_argument("--format", choices=["jsonl", "parquet", "hf"], default="jsonl")
    p.add_argument("--out", required=True, metavar="PATH")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("train", parents=[common, with_recipe],
                       help="SFT of the recipe's student on a selection (resumes an unfinished run)")
    p.add_argument("--selection", required=True, metavar="NAME")
    p.add_argument("--fresh", action="store_true", help="start a new run even if one can be resumed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("eval", parents=[common, with_recipe],
                       help="pass@1 of the student on the held-out split, shown base vs trained")
    p.add_argument("--model", default="base", metavar="base|RUN_ID|latest",
                   help="the base student, a training run's adapter, or the latest finished run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("import-am", parents=[common],
                       help="import AM-DeepSeek-Distilled-40M JSONL files (CATEGORY_TEACHER_Kpass.jsonl)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--recipe", default=None, metavar="NAME|PATH",
                   help="take pass thresholds from this recipe (default: the paper's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_import_am)

    from deepdistill_tui.cli_cluster import add_parsers

    add_parsers(sub, common, with_recipe)

    p = sub.add_parser("recipes", help="list the shipped recipes, or --show one resolved")
    p.add_argument("--show", metavar="NAME|PATH")
    p.set_defaults(handler=cmd_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DeepDistillError as exc:
        print(f"deepdistill-tui: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepdistill-tui: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
