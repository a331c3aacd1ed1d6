"""The core never imports the UI: each core module is imported alone in a fresh interpreter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import deepdistill_tui.core as core

# Every module at every depth, except programs: those run inside the sandbox and `__main__`s.
MODULES = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "deepdistill_tui.core.")
                 if ".inside" not in m.name and not m.name.endswith("__main__"))


@pytest.mark.parametrize("module", MODULES)
def test_core_module_imports_no_ui(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('textual', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_has_every_stage_module() -> None:
    for stage in ("data.ingest", "data.am_import", "teachers.sample", "grading.stage", "difficulty.selection",
                  "train", "evaluation.evaluate", "difficulty.export", "store.database", "recipe",
                  "pipeline.runner", "pipeline.events"):
        assert f"deepdistill_tui.core.{stage}" in MODULES
