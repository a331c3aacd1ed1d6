"""One behaviour per stage, whichever face starts it: each stage of a trimmed tiny recipe runs through
the CLI (a real process) into one store and through the app's worker (Pilot) into another, and the
two stores end up with the same runs, the same summaries and the same data."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Static

from deepdistill_tui.core.pipeline.params import (
    EvalParams,
    ExportParams,
    GradeParams,
    IngestParams,
    SampleParams,
    SelectParams,
    TrainParams,
)
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.tui.app import DeepDistillApp
from tests.test_app import wait_until

pytestmark = pytest.mark.slow

VOLATILE = {"run_id", "run_dir", "seconds", "tokens_per_s", "answers_per_s", "started_at", "finished_at",
            "output", "merged", "gguf", "path", "out", "model_loaded", "db"}
"""Summary keys that differ between any two runs (clocks, ids, folders), not between faces."""


def trimmed() -> Recipe:
    data = load_recipe("tiny").model_dump(mode="json")
    data["sampling"]["query_limit"] = 6
    data["training"].update({"max_steps": 2, "save_steps": 2, "gguf": None})
    data["eval"].update({"limit": 4, "k": 1})
    return Recipe.model_validate(data)


def stages(out: Path) -> list[tuple[str, str, list[str], Any]]:
    """(stage, app tab, CLI arguments, the app's params) in pipeline order."""
    return [
        ("ingest", "data", ["ingest"], IngestParams()),
        ("sample", "sample", ["sample", "--limit", "4"], SampleParams(limit=4)),
        ("grade", "grade", ["grade"], GradeParams()),
        ("select", "select", ["select", "--name", "faces"], SelectParams("faces")),
        ("export", "export", ["export", "--selection", "faces", "--format", "jsonl", "--out", str(out)],
         ExportParams("faces", "jsonl", str(out))),
        ("train", "train", ["train", "--selection", "faces"], TrainParams("faces")),
        ("eval", "evaluate", ["eval", "--model", "base"], EvalParams("base")),
    ]


def normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


def snapshot(db: Path) -> dict[str, Any]:
    """What a face leaves behind: each run's command, status and summary, and the data itself."""
    conn = sqlite3.connect(db)
    runs = [(c, s, normal(json.loads(r) if r else None)) for c, s, r in conn.execute(
        "SELECT command, status, result FROM runs ORDER BY started_at")]
    data = {
        "queries": conn.execute("SELECT count(*), group_concat(query_id) FROM queries").fetchone(),
        "samples": conn.execute("SELECT query_id, pass_index, response FROM samples"
                                " ORDER BY query_id, pass_index").fetchall(),
        "grades": conn.execute("SELECT query_id, pass_index, verify_score, passed, status FROM grades"
                               " ORDER BY query_id, pass_index").fetchall(),
        "members": conn.execute("SELECT query_id, pass_index FROM selection_members"
                                " ORDER BY query_id, pass_index").fetchall(),
        "evals": conn.execute("SELECT model, k, queries, pass_at_1, per_query FROM evals").fetchall(),
    }
    conn.close()
    return {"runs": runs, **data}


def cli(db: Path, recipe_file: Path, args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "deepdistill_tui", *args, "--recipe", str(recipe_file),
                          "--db", str(db)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


async def test_every_stage_leaves_the_same_store_through_the_cli_and_the_app(tmp_path: Path) -> None:
    recipe = trimmed()
    recipe_file = tmp_path / "trimmed.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    (tmp_path / "cli").mkdir()
    (tmp_path / "app").mkdir()
    cli_db, app_db = tmp_path / "cli" / "s.db", tmp_path / "app" / "s.db"

    for _stage, _tab, args, _params in stages(tmp_path / "cli" / "export.jsonl"):
        cli(cli_db, recipe_file, args)

    app = DeepDistillApp(recipe, app_db)
    async with app.run_test(size=(120, 40)) as pilot:
        for stage, tab, _, params in stages(tmp_path / "app" / "export.jsonl"):
            done = len(app.history) + 1
            app.start_stage(stage, tab, params)
            await wait_until(pilot, lambda n=done: len(app.history) >= n, 600)
            assert app.history[-1] == (stage, None), app.history[-1]

    cli_state, app_state = snapshot(cli_db), snapshot(app_db)
    assert [r[:2] for r in cli_state["runs"]] == [(s, "ok") for s, *_ in stages(tmp_path)]
    for key in cli_state:
        assert cli_state[key] == app_state[key], key
    assert cli_state["members"] and cli_state["evals"]  # the comparison compared something
    exported = [(tmp_path / face / "export.jsonl").read_text() for face in ("cli", "app")]
    assert exported[0] == exported[1] and exported[0]


async def test_after_a_headless_run_the_app_shows_its_runs_loss_plot_evaluation_and_next_step(
        tmp_path: Path) -> None:
    """`deepdistill-tui run` in a subprocess (as on a server overnight), then the app on its store."""
    from deepdistill_tui.tui.plots import IntervalChart, LossChart
    from deepdistill_tui.tui.runs import RunsPane

    recipe = trimmed()
    recipe_file = tmp_path / "trimmed.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    db = tmp_path / "night.db"
    cli(db, recipe_file, ["run"])
    with Store(db) as s:
        stages_run = {c for (c,) in s.conn.execute("SELECT command FROM runs WHERE face = 'cli'")}
    assert {"ingest", "sample", "grade", "select", "train", "eval"} <= stages_run
    app = DeepDistillApp(recipe, db)
    async with app.run_test(size=(120, 40)) as pilot:
        runs = app.query_one(RunsPane)
        await wait_until(pilot, lambda: len(runs.shown) >= len(stages_run), 60)
        chart = app.query_one("#loss-curve", LossChart)
        await wait_until(pilot, lambda: len(chart.steps) == recipe.training.max_steps, 60)
        evals = app.query_one("#eval-chart", IntervalChart)
        await wait_until(pilot, lambda: len(evals.labels) == 2, 60)  # the base and the student
        assert evals.labels[0] == "base"
        overview = str(app.query_one("#overview", Static).render())
        nxt = overview.split("Next")[1]
        assert "Train the student" not in nxt and "Done" in nxt, nxt
