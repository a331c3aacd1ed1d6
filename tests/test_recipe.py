from __future__ import annotations

from pathlib import Path

import pytest

from deepdistill_tui.core.errors import RecipeError
from deepdistill_tui.core.recipe import available_recipes, load_recipe

GOOD = """
name: t
data:
  sources: [{path: data/demo/math.jsonl, category: math}]
teachers:
  - {name: a, backend: openai, base_url: "http://127.0.0.1:1/v1"}
selection: {training_teacher: a}
training: {student: {name: s, hf_model: x}}
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return str(p)


def test_shipped_recipes_load() -> None:
    assert {"tiny", "small", "full-32b", "full-72b"} <= set(available_recipes())
    for name in available_recipes():
        assert load_recipe(name).name == name


def test_full_recipes_carry_paper_values() -> None:
    for name in ("full-32b", "full-72b"):
        r = load_recipe(name)
        assert r.grading.thresholds == {"math": 0.99, "code": 0.99, "if": 0.99, "science": 4.99,
                                        "other": 0.7}
        assert set(r.selection.cv_threshold.values()) == {0.05}
        assert r.selection.training_teacher == "r1"
        assert r.training.learning_rate == 8e-5 and r.training.epochs == 1
        assert r.training.max_length == 32768 and r.training.packing
        assert r.cluster is not None
        devices = r.cluster.nodes * r.cluster.gpus_per_node
        assert devices * r.training.micro_batch * r.training.grad_accum == 64
    stage2 = load_recipe("full-32b").training.stage2
    assert stage2 is not None and stage2.learning_rate == 8e-6 and stage2.epochs == 2


def test_good_recipe_from_path(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, GOOD)).name == "t"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("training:", "trainnig:"), "trainnig: unknown key"),
        (("{name: s, hf_model: x}", "{name: s, hf_model: x, lr: 1}"), "training.student.lr: unknown key"),
        (("category: math", "category: maths"), "data.sources.0.category"),
        (("training_teacher: a", "training_teacher: b"), "unknown teacher"),
        (("name: t", "name: [1, 2]"), "name: Input should be a valid string"),
    ],
)
def test_recipe_errors_name_file_and_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert path in msg and expected in msg
    assert "\n" not in msg


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    path = write(tmp_path, bomb)
    with pytest.raises(RecipeError, match=r"line 2: YAML aliases are not allowed"):
        load_recipe(path)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "oops: [unclosed\n")
    with pytest.raises(RecipeError, match=r"r.yaml: line \d+"):
        load_recipe(path)


def test_unknown_recipe_name_lists_known() -> None:
    with pytest.raises(RecipeError, match="no recipe named 'nope'; known: .*tiny"):
        load_recipe("nope")


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))


def test_gguf_export_of_a_hub_student_is_refused_at_load(tmp_path: Path) -> None:
    bad = GOOD.replace("training: {student: {name: s, hf_model: x}}",
                       "training: {student: {name: s, hf_model: x}, gguf: f16}")
    with pytest.raises(RecipeError, match=r"r.yaml: training: `gguf` export copies the tokenizer"):
        load_recipe(write(tmp_path, bad))
