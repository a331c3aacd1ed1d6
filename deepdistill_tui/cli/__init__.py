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
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from deepdistill_tui import __version__
from deepdistill_tui.cli.cluster import add_parsers as add_cluster_parsers
from deepdistill_tui.cli.common import positive_int
from deepdistill_tui.cli.data import cmd_import, cmd_import_am, cmd_ingest, cmd_recipes
from deepdistill_tui.cli.grading import cmd_grade, cmd_grade_file
from deepdistill_tui.cli.pipeline import cmd_ablate, cmd_app, cmd_run, cmd_status
from deepdistill_tui.cli.sampling import cmd_sample
from deepdistill_tui.cli.selection import cmd_export, cmd_select, cmd_selections, cmd_stats
from deepdistill_tui.cli.training import cmd_eval, cmd_train
from deepdistill_tui.core.data.released import FORMATS
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import CATEGORIES
from deepdistill_tui.core.store.database import DEFAULT_DB

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2, like every other bad input (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        print(f"deepdistill-tui: error: {self.prog.removeprefix('deepdistill-tui').strip()}"
              f"{': ' if self.prog != 'deepdistill-tui' else ''}{message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _global_options(defaults: bool) -> tuple[_Parser, _Parser]:
    """--db and --recipe, accepted before the command (as --help shows them) and after it. Only the
    top level holds the defaults: a subcommand's own default would silently replace a value given
    before the command."""
    common = _Parser(add_help=False)
    common.add_argument("--db", default=DEFAULT_DB if defaults else argparse.SUPPRESS, metavar="PATH",
                        help=f"SQLite database (default: ./{DEFAULT_DB})")
    with_recipe = _Parser(add_help=False)
    with_recipe.add_argument("--recipe", default=None if defaults else argparse.SUPPRESS,
                             metavar="NAME|PATH", help="recipes/NAME.yaml or a YAML file (default: tiny)")
    return common, with_recipe


def build_parser() -> argparse.ArgumentParser:
    top_common, top_recipe = _global_options(defaults=True)
    common, with_recipe = _global_options(defaults=False)

    parser = _Parser(
        prog="deepdistill-tui", parents=[top_common, top_recipe],
        description="Difficulty-graded reasoning data and SFT (DeepDistill), at home. "
                    "Without a command: the terminal app.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(handler=cmd_app)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common, with_recipe], help="run the pipeline's stages in order")
    p.add_argument("--stages", help="comma-separated subset of the stages (default: all)")
    p.add_argument("--force", action="store_true", help="re-run stages that already succeeded")
    p.add_argument("--rehearse", action="store_true",
                   help="every stage with its counts capped, in a store beside --db (DB.rehearsal.db), "
                        "then the full run's plan: tokens, steps, checkpoints, disk and hours")
    p.add_argument("--stand-ins", action="store_true",
                   help="with --rehearse: local stand-ins of the same shape for Hub sources, teachers and "
                        "the student, so that a GPU recipe rehearses on a CPU with no network")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", parents=[common, with_recipe],
                       help="where the store stands and the next step (as the app's Overview says it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("ingest", parents=[common, with_recipe], help="ingest the recipe's queries")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("sample", parents=[common, with_recipe],
                       help="generate the missing passes of every (query, teacher)")
    p.add_argument("--teacher", metavar="NAME", help="only this teacher")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N training queries")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--endpoint", action="append", metavar="NAME=URL",
                   help="serve teacher NAME from this OpenAI-compatible URL (repeatable)")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("grade", parents=[common, with_recipe],
                       help="a verify_score for every ungraded sample")
    p.add_argument("--workers", type=positive_int, metavar="N", help="grading processes (default: all cores)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--endpoint", action="append", metavar="NAME=URL",
                   help="the judge teacher NAME's OpenAI-compatible URL (repeatable)")
    p.set_defaults(handler=cmd_grade)

    p = sub.add_parser("grade-file", help="grade JSONL records from anywhere (no database)")
    p.add_argument("--input", required=True, metavar="IN.jsonl")
    p.add_argument("--output", required=True, metavar="OUT.jsonl")
    p.add_argument("--recipe", default=argparse.SUPPRESS, metavar="NAME|PATH",
                   help="thresholds, timeouts and judge from this recipe (default: the paper's)")
    p.add_argument("--workers", type=positive_int, metavar="N")
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

    p = sub.add_parser("ablate", parents=[common, with_recipe],
                       help="train and evaluate the paper's arms (base, cv, random, all, low-lr) on one "
                            "query pool; resumable")
    p.add_argument("--arms", metavar="a,b,...", help="a subset of base,cv,random,all,low-lr (default: all)")
    p.add_argument("--report", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ablate)

    importing = _Parser(add_help=False)  # what import and import-am share
    importing.add_argument("--strict", action="store_true",
                           help="refuse at the first bad row and import nothing (default: skip and count it)")
    importing.add_argument("--recipe", default=argparse.SUPPRESS, metavar="NAME|PATH",
                           help="take pass thresholds and quality filters from this recipe "
                                "(default: the paper's)")
    importing.add_argument("--json", action="store_true", help="print the report as JSON")
    importing.add_argument("--workers", type=positive_int, metavar="N",
                           help="processes that stage the files, a file each (default: the cores, up "
                                "to 4, for 64 MB of files or more; 1: this process only)")
    p = sub.add_parser("import", parents=[common, importing],
                       help="import released responses with their verdicts: AM files, its siblings' "
                            "conversations, or several generations per problem")
    p.add_argument("files", nargs="+", metavar="FILE|DIR|hf:REPO[:CONFIG]")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="am (the 40M release), am-conversations (AM-Thinking-v1 and siblings), "
                        "generations (a list of responses and of verdicts per row); default: auto")
    p.add_argument("--map", action="append", metavar="KEY=COLUMN",
                   help="where a field is: question=, responses=, scores=, ground_truth=, category=, "
                        "teacher=, pass=, answer=, verify_score= (repeatable)")
    p.add_argument("--category", choices=CATEGORIES, help="the category of rows that name none")
    p.add_argument("--teacher", metavar="NAME", help="the teacher of rows that name none")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("import-am", parents=[common, importing],
                       help="import AM-DeepSeek-Distilled-40M files (CATEGORY_TEACHER_Kpass.jsonl): "
                            "import --format am, file names checked")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=cmd_import_am)

    add_cluster_parsers(sub, common, with_recipe)

    p = sub.add_parser("recipes", help="list the shipped recipes, or --show one resolved")
    p.add_argument("--show", metavar="NAME|PATH")
    p.set_defaults(handler=cmd_recipes)
    return parser


def _os_error(exc: OSError) -> str:
    name = exc.filename
    if isinstance(exc, FileExistsError) and name and os.path.isfile(name):
        return f"{name}: is a file, where a folder is needed"
    return f"{name}: {exc.strerror or exc}" if name else str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DeepDistillError as exc:
        print(f"deepdistill-tui: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output under /proc, under a file, in a read-only folder, a full disk
        print(f"deepdistill-tui: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:  # a read-only store, a locked file system
        print(f"deepdistill-tui: error: {getattr(args, 'db', None) or 'the store'}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepdistill-tui: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
