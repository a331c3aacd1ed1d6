"""Stats and selection over 1M synthetic AM-format responses (250k queries x 4 passes of r1).

    python bench/bench_select.py                    # 250k queries
    python bench/bench_select.py --queries 50000

Times import-am, `stats` (everything the CLI's stats command computes) and one Stage I + Stage II
selection of the full-32b recipe, each on the same database in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from deepdistill_tui.core.data.released import import_am
from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.difficulty.stats import compute_stats
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' data writer
from tests.synthetic import write_am_files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=250_000)
    ap.add_argument("--db", help="keep the database here (default: a temporary one)")
    args = ap.parse_args()
    data = load_recipe("full-32b").model_dump()
    data["selection"]["difficulty_teachers"] = []
    recipe = Recipe.model_validate(data)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = write_am_files(tmp / "am", args.queries, teachers=("r1",), passes=4, answer_chars=100)
        with Store(args.db or tmp / "bench.db") as store:
            rep = import_am(store, files)
            print(f"import-am: {rep.responses:,} responses in {rep.seconds:.1f} s "
                  f"({rep.responses / rep.seconds:,.0f}/s)")
            for label, fn in (("stats", lambda: compute_stats(store, recipe)),
                              ("select (Stage I + II)", lambda: run_selection(store, recipe, "bench"))):
                t0 = time.perf_counter()
                fn()
                print(f"{label}: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
