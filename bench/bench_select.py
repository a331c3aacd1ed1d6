"""Import, stats and selection over synthetic AM-format responses (N queries x 4 passes of r1).

    python bench/bench_select.py                               # 250k queries: 1M responses
    python bench/bench_select.py --queries 1000000             # 4M responses
    python bench/bench_select.py --queries 250000 --answer-chars 2000
    python bench/bench_select.py --workers 1                   # the files staged in this process only

Times `import-am` as the command runs it (the rows, then the score summaries and the quality filters
that reads use), `stats` (everything the CLI's stats command computes) and one Stage I + Stage II
selection of the full-32b recipe, each on the same database in one run, and prints each step's peak
resident memory (the kernel's high-water mark is reset before each step, so a step's figure is its own).
The import's worker processes (a file each) are counted apart: the largest one's peak, which each of
them stays under.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.difficulty.stats import compute_stats
from deepdistill_tui.core.pipeline.params import ImportParams
from deepdistill_tui.core.pipeline.runner import run_stage
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' data writer
from tests.synthetic import write_am_files


def peak_mb() -> float:
    """The peak resident memory since the last ``reset_peak`` (VmHWM), else since the start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new high-water mark at the current resident size (Linux: clear_refs 5); elsewhere the
    figures stay the process's peak so far."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=250_000)
    ap.add_argument("--answer-chars", type=int, default=100)
    ap.add_argument("--db", help="keep the database here (default: a temporary one)")
    ap.add_argument("--workers", type=int, help="processes that stage the files (default: the import's)")
    args = ap.parse_args()
    data = load_recipe("full-32b").model_dump()
    data["selection"]["difficulty_teachers"] = []
    recipe = Recipe.model_validate(data)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = write_am_files(tmp / "am", args.queries, teachers=("r1",), passes=4,
                               answer_chars=args.answer_chars)
        print(f"{args.queries * 4:,} responses of {args.answer_chars} characters; peak after writing "
              f"the files {peak_mb():,.0f} MB")
        with Store(args.db or tmp / "bench.db") as store:
            reset_peak()
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            params = ImportParams(tuple(map(str, files)), workers=args.workers)
            done = run_stage(store, "import-am", recipe, params)
            dt = time.perf_counter() - t0
            n = done.summary["import_am"]["responses"]
            workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child's
            print(f"import-am: {n:,} responses in {dt:.1f} s ({n / dt:,.0f}/s); peak {peak_mb():,.0f} MB"
                  + (f", each worker under {workers / 1024:,.0f} MB" if workers > children else ""))
            for label, fn in (("stats", lambda: compute_stats(store, recipe)),
                              ("select (Stage I + II)", lambda: run_selection(store, recipe, "bench"))):
                reset_peak()
                t0 = time.perf_counter()
                fn()
                print(f"{label}: {time.perf_counter() - t0:.2f} s; peak {peak_mb():,.0f} MB")


if __name__ == "__main__":
    main()
