"""The core never imports the UI: each core module is imported alone in a fresh interpreter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import deepdistill_tui.core as core

MODULES = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "deepdistill_tui.core."))


@pytest.mark.parametrize("module", MODULES)
def test_core_module_imports_no_ui(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('textual', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_has_every_stage_module() -> None:
    for stage in ("ingest", "am_import", "sample", "grade", "select", "train", "evaluate", "export",
                  "store", "recipe", "stages", "events"):
        assert f"deepdistill_tui.core.{stage}" in MODULES
