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


def test_no_import_cycle_counting_lazy_imports() -> None:
    """Every import statement, at any depth of any function, as an edge; no module reaches itself.
    (lint-imports checks the layers; this keeps cycles inside one layer out too.)"""
    import ast
    from pathlib import Path

    root = Path(core.__file__).resolve().parents[1]
    mods = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py") if "inside" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    target = child if child in mods else node.module
                    if target in mods and target != m:
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods and a.name != m}

    def reaches(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in graph if (c := reaches(m))]
    assert cycles == [], cycles[0]
