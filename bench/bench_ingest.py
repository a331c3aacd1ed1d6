"""Ingest and import-am throughput on the 2-core machine.

    python bench/bench_ingest.py                 # 200k queries, 240k AM responses
    python bench/bench_ingest.py --queries 50000 --am-queries 5000

Ingest runs with exact dedup only (near-dup off), as the target in issue 2 states; a second figure
with near-dup on shows its cost. Numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.data.released import import_am
from deepdistill_tui.core.recipe import DataConfig
from deepdistill_tui.core.store.database import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' data writer
from tests.synthetic import write_am_files


def make_queries(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            a, b = rng.randint(1, 10**6), rng.randint(1, 10**6)
            # ~3% exact duplicates (a repeated earlier question, differently spaced)
            q = f"What is {a} + {b}? (problem {i})" if rng.random() > 0.03 else "What is 1 +  1?"
            fh.write(json.dumps({"question": q, "answer": str(a + b)}) + "\n")


def bench_ingest(tmp: Path, n: int, near_dup: bool) -> float:
    src = tmp / "q.jsonl"
    if not src.exists():
        make_queries(src, n)
    data = DataConfig.model_validate({
        "sources": [{"path": str(src), "category": "math", "columns": {"ground_truth": "answer"}}],
        "dedup": {"near_dup": near_dup}, "decontamination": {"enabled": False},
    })
    db = tmp / f"ingest-{near_dup}.db"
    with Store(db) as store:
        t0 = time.perf_counter()
        report = ingest(store, data)
        dt = time.perf_counter() - t0
    print(f"ingest near_dup={near_dup}: {report.read} queries in {dt:.2f} s = "
          f"{report.read / dt:,.0f} queries/s (kept {report.kept})")
    return report.read / dt


def bench_import(tmp: Path, n_queries: int) -> float:
    files = write_am_files(tmp / "am", n_queries, passes=4)
    with Store(tmp / "am.db") as store:
        report = import_am(store, files)
    rate = report.responses / report.seconds
    print(f"import-am: {report.responses} responses in {report.seconds:.2f} s = {rate:,.0f} responses/s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--near-dup-queries", type=int, default=20_000)
    ap.add_argument("--am-queries", type=int, default=20_000, help="x 3 teachers x 4 passes responses")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_ingest(tmp, args.queries, near_dup=False)
        small = tmp / "small"
        small.mkdir()
        bench_ingest(small, args.near_dup_queries, near_dup=True)
        bench_import(tmp, args.am_queries)


if __name__ == "__main__":
    main()
