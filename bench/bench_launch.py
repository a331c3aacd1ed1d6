"""Time from launching `deepdistill-tui --recipe tiny` to the app's first paint.

    python bench/bench_launch.py            # 7 launches, median and worst
    python bench/bench_launch.py --runs 15

Each launch is a fresh interpreter running the CLI's own entry point with the app headless; the clock
starts before the process is spawned and stops when Textual reports the first screen ready (after the
first paint). A bare `python -c "import textual.app"` launch is timed in the same run for scale.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
start = float(sys.argv[1])
import textual.app
from deepdistill_tui.tui import app as tui

def first_paint(self):
    print(f"{time.time() - start:.4f}", flush=True)
    self.exit()

real_run = tui.DeepDistillApp.run
tui.DeepDistillApp.on_ready = first_paint
tui.DeepDistillApp.run = lambda self, **kw: real_run(self, headless=True)
from deepdistill_tui.cli import main
main(["--recipe", "tiny", "--db", sys.argv[2]])
"""


def launch(code: str, db: Path) -> float:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code, str(start), str(db)], capture_output=True,
                         text=True, check=True)
    lines = out.stdout.strip().splitlines()
    return float(lines[-1]) if lines else time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "launch.db"
        launch(CHILD, db)  # warm the page cache and create the store once
        bare, app = [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            bare.append(launch("import textual.app", db))
            app.append(launch(CHILD, db))
    print(f"bare textual import: median {statistics.median(bare):.2f} s")
    print(f"launch to first paint: median {statistics.median(app):.2f} s, worst {max(app):.2f} s "
          f"({args.runs} runs; target 1.5 s)")


if __name__ == "__main__":
    main()
