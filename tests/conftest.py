from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepdistill_tui.core.store.database import Store

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying why, when llama.cpp was built with its AMX kernels: on Sapphire Rapids
    class CPUs (this project's CI machines among them) their matrix product segfaults on the first
    batch of a few tokens (llama.cpp issue 20824), which would kill the run with no test named. The
    README's install commands build without them."""
    try:
        import llama_cpp
    except ImportError:
        return
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "AMX_INT8 = 1" in info:
        flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        pytest.exit("llama-cpp-python was built with llama.cpp's AMX kernels, which crash here; rebuild it "
                    "without them: pip cache remove llama_cpp_python && "
                    f"CMAKE_ARGS=\"-DCMAKE_C_FLAGS='{flags}'"
                    f" -DCMAKE_CXX_FLAGS='{flags}'\" pip install --force-reinstall --no-deps"
                    " 'llama-cpp-python[server]==0.3.36'", returncode=2)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "test.db")
    yield s
    s.close()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The recipes and demo data in a scratch folder, so tests can edit them freely."""
    dst = tmp_path / "proj"
    shutil.copytree(REPO / "recipes", dst / "recipes")
    shutil.copytree(REPO / "data" / "demo", dst / "data" / "demo")
    return dst


def data_counts(store: Store) -> dict[str, int]:
    """Row counts of the data tables (runs keep a log of failed attempts, so they are left out)."""
    return {t: store.count(t) for t in ("queries", "teachers", "samples", "grades", "selections")}
