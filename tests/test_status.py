"""`deepdistill-tui status`: the next step read from the store's state, the same one the app's Overview
shows, on stores in every state from none to a trained and evaluated student."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deepdistill_tui.core.data.ingest import ingest
from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.evaluation.evaluate import _store_result
from deepdistill_tui.core.pipeline.overview import overview
from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.store.database import Store
from tests.test_select import put

RECIPE = load_recipe("tiny")
TEACHER = RECIPE.selection.training_teacher


def status(db: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "deepdistill_tui", "status", "--db", str(db), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    nxt: dict[str, Any] = json.loads(out.stdout)["next"]
    if db.exists():
        with Store(db) as store:  # the app's Overview says the same
            assert overview(store, RECIPE).next_step == (nxt["stage"], nxt["why"])
    return nxt


def test_status_names_the_next_step_in_every_state(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    assert status(db)["stage"] == "ingest" and not db.exists()  # status never creates a store

    with Store(db) as s:
        ingest(s, RECIPE.data)
        train = [q for (q,) in s.conn.execute("SELECT query_id FROM queries WHERE split = 'train'")]
    nxt = status(db)
    assert nxt["stage"] == "sample" and f"{len(train) * 4} passes are missing" in nxt["why"]

    with Store(db) as s:
        put(s, {(q, TEACHER): [None] * 4 for q in train[:-1]})
    assert "4 passes are missing" in status(db)["why"]  # one query left to sample

    with Store(db) as s:
        put(s, {(train[-1], TEACHER): [None] * 4})
    nxt = status(db)
    assert nxt["stage"] == "grade" and f"{len(train) * 4} responses have no grade" in nxt["why"]

    with Store(db) as s, s.write() as conn:
        conn.execute("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed, status,"
                     " grader, grader_version, created_at) SELECT query_id, teacher_id, pass_index,"
                     " pass_index % 2, pass_index % 2, 'ok', 't', '1', 0 FROM samples")
    assert status(db)["stage"] == "select"

    with Store(db) as s:
        run_selection(s, RECIPE, RECIPE.name)
    nxt = status(db)
    assert nxt["stage"] == "train" and nxt["command"].endswith(f"--selection {RECIPE.name}")

    with Store(db) as s:
        run_id = s.start_run("train", RECIPE.name, RECIPE.to_json(), {"selection": RECIPE.name})
        s.finish_run(run_id, "ok", {"output": "x"})
    nxt = status(db)
    assert nxt["stage"] == "eval" and run_id in nxt["why"]

    evals = [(f"e{i}", "math") for i in range(20)]
    with Store(db) as s:
        _store_result(s, RECIPE, "base", evals, {q: i % 4 == 0 for i, (q, _) in enumerate(evals)}, {}, 1.0,
                      "llama.cpp q8_0", None)
        _store_result(s, RECIPE, run_id, evals, {q: 1 for q, _ in evals}, {}, 1.0, "llama.cpp q8_0", None)
    nxt = status(db)
    assert nxt["stage"] == "done" and "+75.0 [" in nxt["why"] and "ablate" in nxt["command"]

    time.sleep(0.01)
    with Store(db) as s:  # a new selection since the training: train again
        run_selection(s, RECIPE, RECIPE.name)
    nxt = status(db)
    assert nxt["stage"] == "train" and "newer than the last training" in nxt["why"]


def test_a_query_limit_bounds_the_passes_the_next_step_asks_for(tmp_path: Path) -> None:
    """A recipe that samples its first N training queries is done sampling when those N are: the
    rest of the split is not 'missing' (it said 836 passes were missing after a trimmed `run`)."""
    data = RECIPE.model_dump()
    data["sampling"]["query_limit"] = 3
    limited = type(RECIPE).model_validate(data)
    db = tmp_path / "l.db"
    with Store(db) as s:
        ingest(s, limited.data)
        first = [q for (q,) in s.conn.execute(
            "SELECT query_id FROM queries WHERE split = 'train' ORDER BY query_id LIMIT 3")]
        put(s, {(q, TEACHER): [None] * 3 for q in first})  # 3 of 4 passes each
        assert overview(s, limited).next_step[1].startswith("Sample answers from the teachers: 3 passes")
        with s.write() as conn:  # the fourth pass of each
            conn.executemany("INSERT INTO samples (query_id, teacher_id, pass_index, response, reasoning,"
                             " answer, completion_tokens, created_at) VALUES (?, ?, 3, 'r', 'r', 'a', 10, 0)",
                             [(q, f"id-{TEACHER}") for q in first])
        assert overview(s, limited).next_step[0] == "grade"
