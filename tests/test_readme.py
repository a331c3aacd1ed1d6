"""The README is a promise: CI runs exactly its test command."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci_lines = (REPO / ".ci" / "run").read_text().strip().splitlines()
    test_command = ci_lines[-1]
    assert "python -m pytest" in test_command
    assert f"\n{test_command}\n" in readme


def test_readme_launches_the_tiny_recipe() -> None:
    assert "deepdistill-tui --recipe tiny" in (REPO / "README.md").read_text()


def test_the_layout_block_shows_every_package_of_the_core() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n```\n", layout.index("```") + 3)]
    packages = sorted(p.parent.name for p in (REPO / "deepdistill_tui" / "core").glob("*/__init__.py"))
    assert packages and [p for p in packages if f"  {p}/" not in layout] == []
