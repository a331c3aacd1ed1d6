"""The package installs like one: a built wheel, in a fresh virtual environment, run from an unrelated
folder, lists the shipped recipes and ingests the tiny recipe's demo data (package data, not the
repository). Slow: building the wheel and the environment takes half a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the build backend (setuptools) is already here, and CI may be offline.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
          str(REPO)], cwd=out)
    [built] = out.glob("deepdistill_tui-*.whl")
    return built


def test_the_wheel_carries_recipes_demo_data_and_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("deepdistill_tui/recipes/tiny.yaml", "deepdistill_tui/recipes/small.yaml",
                    "deepdistill_tui/data/demo/math.jsonl",
                    "deepdistill_tui/core/cluster/templates/train.sbatch"):
        assert shipped in names, shipped


def test_installed_wheel_runs_from_an_unrelated_folder(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages; the package itself only from the
    # wheel (the venv's own site-packages is searched first).
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    _run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import deepdistill_tui; print(deepdistill_tui.__file__)"], cwd=elsewhere, env=env)
    where_text = where.stdout.strip()
    assert where_text.startswith(str(venv)), where_text  # the wheel's copy, not the repository's

    exe = str(venv / "bin" / "deepdistill-tui")
    listed = _run([exe, "recipes"], cwd=elsewhere, env=env).stdout
    assert {"tiny", "small", "full-32b", "full-72b"} <= {line.split(":")[0] for line in listed.splitlines()}
    report = json.loads(_run([exe, "ingest", "--recipe", "tiny", "--db", "t.db", "--json"], cwd=elsewhere,
                             env=env).stdout)
    assert report["ingest"]["inserted"] > 0 and report["ingest"]["by_split"]["eval"] > 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["t.db"]  # nothing but the store it was given
