"""`run --rehearse`: the recipe's own stages with every count capped, in a store of its own, and the
full run's plan at the rates the rehearsal measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepdistill_tui.core.pipeline.rehearsal import CAPS, rehearsal_recipe, rehearsal_store
from deepdistill_tui.core.recipe import load_recipe


def test_a_rehearsal_caps_every_count_and_keeps_everything_else() -> None:
    small = load_recipe("small")
    r = rehearsal_recipe(small)
    assert r.sampling.query_limit == CAPS["queries"] and r.sampling.passes == CAPS["passes"]
    assert all(t.sampling.max_tokens <= CAPS["max_tokens"] for t in r.teachers)  # type: ignore[union-attr]
    assert r.training.max_steps == CAPS["steps"] and r.training.max_length == CAPS["max_length"]
    assert r.eval.limit == CAPS["eval_problems"] and r.eval.k == 1
    # The code paths a rehearsal is for stay the recipe's own.
    assert r.training.save_steps == small.training.save_steps == 0.1  # a share: a checkpoint, then more
    assert r.training.method == "qlora" and r.training.packing and r.training.gguf == small.training.gguf
    assert r.selection == small.selection and r.grading == small.grading
    assert [t.template for t in r.teachers] == [t.template for t in small.teachers]  # type: ignore[union-attr]
    assert r.data == small.data  # ingest is not capped: the plan needs the real number of queries


def test_a_rehearsal_keeps_to_its_own_store() -> None:
    assert rehearsal_store(Path("runs/deepdistill.db")) == Path("runs/deepdistill.rehearsal.db")
    assert rehearsal_store(Path("x")) == Path("x.rehearsal.db")


@pytest.mark.slow
def test_rehearsing_tiny_runs_every_stage_and_prints_the_full_runs_plan(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    out = subprocess.run([sys.executable, "-m", "deepdistill_tui", "run", "--recipe", "tiny", "--rehearse",
                          "--db", str(db)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    text = out.stdout
    for stage in ("ingest", "sample", "grade", "select", "train", "eval"):
        assert f"✔ {stage}" in text, text
    assert not db.exists() and (tmp_path / "real.rehearsal.db").is_file()  # the real store untouched
    plan = text.split("The full run of tiny")[1]
    for what in ("training queries", "tokens to sample", "sampling", "grading", "training", "checkpoints",
                 "evaluation", "disk", "total"):
        assert f"\n  {what} " in plan, plan
    assert "(measured)" in plan and "hours on this machine" in plan
    tiny = load_recipe("tiny")
    assert f"{tiny.training.max_steps:,} optimizer steps" in plan if tiny.training.max_steps else True


@pytest.mark.slow
def test_small_rehearses_with_stand_ins_on_a_cpu_with_no_network(tmp_path: Path) -> None:
    """`run --recipe small --rehearse --stand-ins`: the GPU recipe's own stages and code paths, its
    Hub sources, teachers and student replaced by local things of the same shape."""
    import gguf

    from deepdistill_tui.core.store.database import Store

    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # no network: nothing may need one

    out = subprocess.run([sys.executable, "-m", "deepdistill_tui", "run", "--recipe", "small", "--rehearse",
                          "--stand-ins", "--db", "real.db"], capture_output=True, text=True, timeout=900,
                         cwd=tmp_path, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    for stage in ("ingest", "sample", "grade", "select", "train", "eval"):
        assert f"✔ {stage}" in out.stdout
    assert "in NF4" in out.stdout and "checkpoint at step" in out.stdout  # 4-bit, save_steps as a share
    assert "resuming from checkpoint-1" in out.stdout  # stopped at its first checkpoint, then resumed
    assert "stopped at its first checkpoint and resumed from it" in out.stdout
    assert "The full run of small" in out.stdout
    with Store(tmp_path / "real.rehearsal.db") as s:
        prefills = {p for (p,) in s.conn.execute("SELECT DISTINCT prefill FROM samples")}
        assert prefills == {"<think>\n"}  # the R1-style template opened every answer's reasoning
        teachers = {n for (n,) in s.conn.execute("SELECT DISTINCT t.name FROM samples JOIN teachers t"
                                                 " USING (teacher_id)")}
        assert teachers == {"r1-distill-1.5b", "r1-distill-7b"}  # the band's teacher sampled too
        assert s.scalar("SELECT count(*) FROM queries WHERE category = 'code' AND question LIKE"
                        " '%Your code should pass this test:%assert%'")  # the MBPP template
        # Every answer graded; SmolLM2 rarely closes its reasoning within the rehearsal's 256 tokens, so
        # most (often all) grades come from the R1 format check that runs before the graders.
        assert s.scalar("SELECT count(*) FROM grades") == s.scalar("SELECT count(*) FROM samples") > 0
        rule = s.scalar("SELECT rule FROM selections WHERE name = 'small'")
        assert '"difficulty_band"' in rule and "r1-distill-1.5b" in rule
        models = [m for (m,) in s.conn.execute("SELECT model FROM evals ORDER BY created_at")]
        run_dir = Path(s.scalar("SELECT json_extract(args, '$.run_dir') FROM runs WHERE command = 'train'"))
    assert models[0] == "base" and len(models) == 2  # base and student through llama.cpp
    exported = next(run_dir.glob("*.gguf"))
    arch = gguf.GGUFReader(exported).fields["general.architecture"]
    assert bytes(arch.parts[-1]).decode() == "qwen2"  # the small student's architecture, exported


@pytest.mark.slow
async def test_the_app_rehearses_and_shows_the_plan(tmp_path: Path) -> None:
    from textual.widgets import Static

    from deepdistill_tui.core.store.database import Store
    from deepdistill_tui.tui.app import DeepDistillApp
    from deepdistill_tui.tui.screens import PlanScreen
    from tests.test_app import wait_until

    db = tmp_path / "app.db"
    app = DeepDistillApp(load_recipe("tiny"), db)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, PlanScreen), 600)
        text = str(app.screen.query_one("#plan-text", Static).render())
        assert "The full run of tiny" in text and "tokens to sample" in text and "(measured)" in text
        assert "stand-ins" not in text  # tiny's models and data are all here
        assert app.history[-1] == ("rehearse", None)
    with Store(db) as s:
        assert s.scalar("SELECT count(*) FROM samples") == 0  # the app's own store is not touched
    with Store(tmp_path / "app.rehearsal.db") as s:
        faces = {f for (f,) in s.conn.execute("SELECT DISTINCT face FROM runs")}
        assert faces == {"app"} and s.scalar("SELECT count(*) FROM samples") > 0
