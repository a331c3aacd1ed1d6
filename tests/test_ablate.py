"""`ablate`: the paper's arms trained and evaluated on one query pool, each through the normal stages,
resumable, with its table stored and written as Markdown. Slow: four short trainings and five evals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.evaluation.ablate import ARMS, LOW_LR_FACTOR, arm_selection, load_pool, parse_arms
from deepdistill_tui.core.pipeline.context import StageContext
from deepdistill_tui.core.pipeline.events import AblateArm, Event
from deepdistill_tui.core.pipeline.params import AblateParams
from deepdistill_tui.core.pipeline.runner import run_stage
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store


def trimmed() -> Recipe:
    data = load_recipe("tiny").model_dump(mode="json")
    data["sampling"]["query_limit"] = 24
    for t in data["teachers"]:
        t["sampling"]["max_tokens"] = 32
    data["training"].update({"max_steps": 2, "save_steps": 2, "micro_batch": 4})
    data["eval"].update({"limit": 6, "max_tokens": 24})
    return Recipe.model_validate(data)


def test_arms_are_parsed_with_base_always() -> None:
    assert parse_arms(None) == list(ARMS)
    assert parse_arms("random,cv") == ["base", "cv", "random"]
    with pytest.raises(DeepDistillError, match="unknown arm"):
        parse_arms("cv,nope")


@pytest.mark.slow
def test_ablate_stores_every_arm_and_a_rerun_redoes_nothing(tmp_path: Path) -> None:
    r = trimmed()
    events: list[Event] = []
    with Store(tmp_path / "a.db") as store:
        rows = run_stage(store, "ablate", r, AblateParams(), StageContext(events.append)).summary["arms"]
        pool = load_pool(store, r)
        cv, rnd = arm_selection(pool, r, "cv"), arm_selection(pool, r, "random")
        trains = store.runs("train", r.name)
    by_arm = {row["arm"]: row for row in rows}
    assert list(by_arm) == list(ARMS)
    assert by_arm["base"]["steps"] == 0 and by_arm["base"]["model"] == "base"
    for arm in ("cv", "random", "all", "low-lr"):
        row = by_arm[arm]
        assert row["steps"] == 2 and row["final_loss"] is not None and row["responses"] > 0
        assert 0 <= row["ci_low"] <= row["pass_at_1"] <= row["ci_high"] <= 1
        assert row["delta_vs_base"]["problems"] == 6
    # random: as many responses as cv, drawn from the passing ones; all: every passing one
    assert by_arm["random"]["responses"] == by_arm["cv"]["responses"] == len(cv.members) == len(rnd.members)
    assert by_arm["all"]["responses"] == int(pool.passing.sum()) >= by_arm["cv"]["responses"]
    assert by_arm["low-lr"]["learning_rate"] == pytest.approx(r.training.learning_rate * LOW_LR_FACTOR)
    assert len(trains) == 4 and all(t["status"] == "ok" for t in trains)
    assert [e.arm for e in events if isinstance(e, AblateArm) and e.status == "finished"] == list(ARMS)

    # Again, through the CLI: every arm is done, nothing is trained, the table is written.
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(r.model_dump(mode="json")))
    report = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "deepdistill_tui", "ablate", "--recipe", str(recipe_file),
                           "--db", str(tmp_path / "a.db"), "--report", str(report), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again: list[dict[str, Any]] = json.loads(proc.stdout)
    assert [row["arm"] for row in again] == list(ARMS)
    assert "arm cv: skipped" in proc.stderr
    with Store(tmp_path / "a.db") as store:
        assert len(store.runs("train", r.name)) == 4
    text = report.read_text()
    assert "deepdistill-tui ablate --recipe" in text and "Machine:" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + len(ARMS)  # header + arms
