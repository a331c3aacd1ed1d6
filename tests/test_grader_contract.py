"""The grader contract, over every registered kind: one verdict per item, whatever the item holds.

A new kind joins ``GRADERS`` and is tested here with no new test written; it passes when hostile input
(no answer, the wrong shapes of references, tests and constraints, a megabyte of text, NUL bytes) comes
back as verdicts and ``close`` can be called twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepdistill_tui.core.errors import RecipeError
from deepdistill_tui.core.grading.base import GraderKind, GradingEnv, Item, Verdict
from deepdistill_tui.core.grading.registry import FALLBACK, GRADERS
from deepdistill_tui.core.grading.sandbox.host import Limits, sandbox_status
from deepdistill_tui.core.grading.stage import Grader
from deepdistill_tui.core.recipe import CATEGORIES, DEFAULT_GRADERS, SHIPPED, GradingConfig, load_recipe

CFG = GradingConfig(require_reasoning=False, math_timeout_s=3, code_timeout_s=3)
STATUSES = {"ok", "error", "wrong_format", "timeout", "sandbox_unavailable", "sandbox_error",
            "runtime_error", "compile_error", "memory", "output_limit"}


def hostile_items(category: str) -> list[Item]:
    """Every field a query or a response can bring, in shapes a grader must survive."""
    big = "x" * 1_000_000
    shapes: list[tuple[str, str | None, str | None, object, object]] = [
        ("", None, None, None, None),
        ("\x00\x00", "\x00", "\x00", "\x00", "\x00"),
        (big, big, big, big, big),
        ("```python\nwhile True: pass\n```", None, "4", {"x": 1}, "{"),
        ("\\boxed{4}", "\\boxed{4}", "4", [1, 2], [None]),
        ("```python\nprint(1)\n```", None, "not latex $$", json.dumps({"inputs": ["1"], "outputs": ["1"]}),
         [{"type": "max_words", "value": "abc"}]),
        ("ok", "ok", None, "not json", {"instruction_id_list": ["no:such"], "kwargs": [{}]}),
    ]
    return [Item(i, category, "q", resp, None, answer, truth, tests, cons)
            for i, (resp, answer, truth, tests, cons) in enumerate(shapes)]


@pytest.mark.parametrize("name", sorted(GRADERS))
def test_every_kind_answers_every_item_and_never_raises(name: str) -> None:
    kind_class = GRADERS[name]
    assert issubclass(kind_class, GraderKind) and kind_class.name == name
    env = GradingEnv(CFG, 1, Limits(wall_s=3, cpu_s=3, memory_mb=256))
    kind = kind_class(env)
    try:
        assert kind.version().strip()
        # Each category the kind could be mapped to: its items go through grade, declined or not.
        items = [item for cat in CATEGORIES for item in hostile_items(cat) if kind.accepts(item)]
        scored = list(kind.grade(items))
    finally:
        kind.close()
        kind.close()
    assert sorted(id(s.item) for s in scored) == sorted(id(i) for i in items)
    for s in scored:
        assert isinstance(s.verdict, Verdict) and s.seconds >= 0
        assert s.verdict.status in STATUSES, s.verdict
        assert s.verdict.score is None or 0 <= s.verdict.score <= 5
        if name == "code" and not sandbox_status()[0]:
            continue
        assert s.verdict.status != "sandbox_error", s.verdict


def test_the_default_mapping_covers_every_category_with_a_registered_kind() -> None:
    assert set(DEFAULT_GRADERS) == set(CATEGORIES)
    assert set(DEFAULT_GRADERS.values()) <= set(GRADERS)
    assert FALLBACK in GRADERS


def test_a_recipe_maps_a_category_to_another_kind() -> None:
    """'other' answers checked by constraints instead of the judge: a second grader for a category."""
    items = [Item(0, "other", "Answer in at most 3 words.", "Yes it is.", None, "Yes it is.",
                  constraints=[{"type": "max_words", "value": 3}])]
    with Grader(CFG) as grader:
        (_, by_default), = grader.grade(items)
    assert by_default.grader == "judge" and by_default.status == "error"  # no judge in this recipe
    with Grader(CFG.model_copy(update={"graders": {**CFG.graders, "other": "if"}})) as grader:
        (_, remapped), = grader.grade(items)
    assert (remapped.grader, remapped.status, remapped.passed) == ("if", "ok", True)


def test_a_recipe_naming_an_unknown_kind_is_refused_with_its_key(tmp_path: Path) -> None:
    data = yaml.safe_load((SHIPPED / "recipes" / "tiny.yaml").read_text())
    data.setdefault("grading", {})["graders"] = {"science": "oracle"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    cfg = load_recipe(str(recipe)).grading
    assert cfg.graders["math"] == "math"  # the recipe names one category; the rest keep the default
    with pytest.raises(RecipeError, match=r"grading\.graders\.science: unknown grader 'oracle'"):
        Grader(cfg)
    cli = subprocess.run([sys.executable, "-m", "deepdistill_tui", "stats", "--recipe", str(recipe),
                          "--db", str(tmp_path / "none.db")], capture_output=True, text=True)
    assert cli.returncode == 2 and "grading.graders.science: unknown grader 'oracle'" in cli.stderr
    assert not (tmp_path / "none.db").exists()
