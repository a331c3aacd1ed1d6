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
