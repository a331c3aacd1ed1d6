"""The backend contract, over every registered backend, on real engines: llama.cpp on the bundled
GGUF in this process, and llama-cpp-python's OpenAI-compatible server on loopback.

A new backend joins ``BACKENDS`` and a ``teacher_for`` line here, and passes when: ``generate`` gives
one completion per seed; ``generate_many`` hands back every request once, a prompt that cannot fit as
its ``PromptTooLong`` while the others go on; ``scores_logprobs`` says truly whether
``response_logprobs`` works; ``close`` releases it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.recipe import LlamaCppTeacher, OpenAITeacher, Teacher, load_recipe
from deepdistill_tui.core.teachers.base import Completion, PromptTooLong, Request, TeacherError
from deepdistill_tui.core.teachers.registry import BACKENDS, open_backend
from deepdistill_tui.core.teachers.sample import teacher_identity
from tests.test_sample import llama_server  # noqa: F401 - the fixture, shared

SAMPLING = {"max_tokens": 8, "temperature": 0.7, "top_p": 0.95, "seed": 1}


def teacher_for(backend: str, server: str) -> Teacher:
    smol = load_recipe("tiny").teachers[0]
    assert isinstance(smol, LlamaCppTeacher)
    if backend == "llama_cpp":
        return smol.model_copy(update={"sampling": smol.sampling.model_copy(update=SAMPLING),
                                       "n_ctx": 512, "max_sequences": 8})
    if backend == "openai":
        return OpenAITeacher(name="served", backend="openai", base_url=server, served_model="smollm2",
                             sampling=smol.sampling.model_copy(update=SAMPLING), concurrency=4,
                             n_ctx=512, timeout_s=60)
    raise AssertionError(f"backend {backend} has no teacher in this test: add one")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_keeps_the_contract(name: str, llama_server: str) -> None:  # noqa: F811
    teacher = teacher_for(name, llama_server)
    backend, _ = open_backend(teacher, passes=2)
    try:
        outs = backend.generate("What is 2 + 2?", [1, 2])
        assert len(outs) == 2 and all(isinstance(c, Completion) for c in outs)
        assert all(c.completion_tokens <= 8 and c.finish_reason in ("stop", "length") for c in outs)

        questions = ["What is 3 + 4?", "Name a colour.", "word " * 2000, "What is 10 - 7?"]
        requests = [Request(i, q, [10 * i, 10 * i + 1]) for i, q in enumerate(questions)]
        answers: dict[Any, Any] = {}
        for req, got in backend.generate_many(iter(requests)):
            assert req.key not in answers
            answers[req.key] = got
        assert sorted(answers) == [0, 1, 2, 3]
        for key in (0, 1, 3):
            assert isinstance(answers[key], list) and len(answers[key]) == 2, answers[key]
        if name == "llama_cpp":  # the engine knows its context; a server answers with an HTTP error
            assert isinstance(answers[2], PromptTooLong)

        if backend.scores_logprobs:
            logprobs = backend.response_logprobs("What is 2 + 2?", " It is 4.")
            assert logprobs and all(lp <= 0 for lp in logprobs)
        else:
            with pytest.raises(TeacherError, match="cannot score"):
                backend.response_logprobs("What is 2 + 2?", " It is 4.")
    finally:
        backend.close()


def test_a_released_teacher_opens_no_backend() -> None:
    data = load_recipe("tiny").model_dump()
    data["teachers"].append({"name": "r1", "backend": "am_import"})
    released = load_recipe("tiny").model_validate(data).teacher("r1")
    with pytest.raises(TeacherError, match="r1: backend am_import cannot sample"):
        open_backend(released, passes=1)


def test_each_backend_owns_its_fields(tmp_path: Path) -> None:
    """A llama.cpp teacher with a server's field (or the reverse) is refused by its key."""
    from deepdistill_tui.core.errors import RecipeError
    from deepdistill_tui.core.recipe import validate_recipe

    data = load_recipe("tiny").model_dump(mode="json")
    data["teachers"][0]["base_url"] = "http://127.0.0.1:1/v1"
    with pytest.raises(RecipeError, match=r"teachers\.0\.base_url: unknown key"):
        validate_recipe(data, "r.yaml")
    data["teachers"][0].pop("base_url")
    data["teachers"][0]["backend"] = "openai"
    with pytest.raises(RecipeError, match=r"teachers\.0\.(base_url: Field required|model: unknown key)"):
        validate_recipe(data, "r.yaml")
    data["teachers"][0]["backend"] = "vllm"
    with pytest.raises(RecipeError, match=r"teachers\.0: backend must be one of llama_cpp, openai"):
        validate_recipe(data, "r.yaml")


def test_teacher_ids_are_those_of_stores_made_before_the_union(tmp_path: Path) -> None:
    """Ids hash the weights and the sampling setup; splitting Teacher by backend must not move them,
    or every existing store would sample its teachers again (values from the commit before)."""
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + bytes(range(256)))
    got = {t.name: teacher_identity(t, fake if t.backend == "llama_cpp" else None).teacher_id
           for name in ("tiny", "full-32b") for t in load_recipe(name).teachers}
    assert got == {"smollm2-135m": "smollm2-135m-d064bd2f533a", "gemma3-270m": "gemma3-270m-d064bd2f533a",
                   "smollm2-judge": "smollm2-judge-61898aa5cbce", "1.5b": "1.5b-e967d0a5b8c1",
                   "7b": "7b-847679dabb72", "r1": "r1-57e3ca766145"}
