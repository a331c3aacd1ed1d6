"""Stages return typed results; the summary the runs row keeps and --json prints is their one JSON form."""

from __future__ import annotations

import pytest

from deepdistill_tui.core.data.ingest import IngestResult
from deepdistill_tui.core.grading.stage import GradeResult
from deepdistill_tui.core.pipeline.runner import run_stage
from deepdistill_tui.core.recipe import load_recipe
from deepdistill_tui.core.store.database import Store


def test_a_stage_hands_back_its_own_type_and_its_summary_is_what_the_runs_row_keeps(store: Store) -> None:
    recipe = load_recipe("tiny")
    done = run_stage(store, "ingest", recipe)
    ingested = done.typed(IngestResult)
    assert ingested.ingest is not None and ingested.ingest.kept == store.count("queries") > 0
    assert ingested.import_am is None and "import_am" not in done.summary
    assert store.run(str(done.run_id))["result"] == done.summary == ingested.summary()

    graded = run_stage(store, "grade", recipe).typed(GradeResult)  # nothing sampled: nothing to grade
    assert (graded.graded, graded.passed, graded.by_status, graded.perplexity) == (0, 0, {}, None)
    with pytest.raises(TypeError, match="stage grade gave GradeResult, not IngestResult"):
        run_stage(store, "grade", recipe).typed(IngestResult)
