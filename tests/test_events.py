"""Events say what they belong to: the app routes by it, with no list of classes to keep up to date."""

from __future__ import annotations

from deepdistill_tui.core.pipeline import events
from deepdistill_tui.tui.app import PANES


def test_every_event_belongs_to_a_part_the_app_shows() -> None:
    kinds = events._KINDS
    assert len(kinds) >= 25
    for name, cls in kinds.items():
        assert cls.kind == name
        assert cls.area in {"run", "download", *PANES}, (name, cls.area)
    progress = {name for name, cls in kinds.items() if cls.high_rate}
    assert progress == {"sample_progress", "grade_progress", "perplexity_progress", "eval_progress",
                        "train_step", "download_progress"}


def test_waiting_belongs_to_the_stage_that_waits() -> None:
    assert events.Waiting("grade", "m").topic() == "grade"
    assert events.Waiting("sample", "m").topic() == "sample"
    assert events.TrainStep(1, 2, 0.5).topic() == "train"
