"""Stand-ins for what a machine without a GPU or a network cannot have, keeping each thing's shape, so
that a recipe like ``small`` can be rehearsed anywhere (``run --rehearse --stand-ins``).

- Each Hub or remote source becomes a small local JSONL file with the same columns, written here: the
  column map, ground-truth regex and question template of the recipe still apply to it.
- Each sampled teacher becomes SmolLM2-135M with an R1-style chat template, run by llama.cpp in
  process, so the R1 prefill and the grading of a reasoning trace run as they would on the real
  teachers (core/student/standin.py makes the models).
- The student becomes a small model of its own architecture (a qwen2 for ``small``), as a
  transformers folder and as the GGUF the base is evaluated from.
Everything else (templates, graders, thresholds, selection, the training method, packing, export) is
the recipe's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepdistill_tui.core.recipe import Recipe, Student
from deepdistill_tui.core.student.standin import build_student, r1_style_teacher, student_family

ROWS = {"train": 24, "eval": 8}


def needed(recipe: Recipe) -> list[str]:
    """What of the recipe this machine does not have (a Hub source, a model not downloaded yet): a
    rehearsal here needs stand-ins for them."""
    from deepdistill_tui.core.pipeline.overview import model_statuses

    out = [f"source {s.path}" for s in recipe.data.sources if s.format == "hf_hub"]
    return out + [f"{m.role} {m.name}" for m in model_statuses(recipe) if not m.present]


def stand_in_recipe(recipe: Recipe, folder: Path) -> Recipe:
    folder.mkdir(parents=True, exist_ok=True)
    data = recipe.model_dump(mode="json")
    data["data"]["sources"] = [_local_source(s, i, folder) for i, s in enumerate(data["data"]["sources"])]
    teacher = r1_style_teacher(folder)
    for t in data["teachers"]:
        if t["backend"] == "am_import":
            continue
        for key in ("base_url", "served_model", "concurrency", "timeout_s"):
            t.pop(key, None)
        t.update(backend="llama_cpp", model={"path": str(teacher)}, n_gpu_layers=0, flash_attn=None,
                 n_ctx=min(t.get("n_ctx", 4096), 4096), template="chat")
    data["training"]["student"] = _student(recipe.training.student, folder)
    return Recipe.model_validate(data)


# ---------------------------------------------------------------- sources

def _local_source(source: dict[str, Any], index: int, folder: Path) -> dict[str, Any]:
    if source["format"] != "hf_hub":  # a file or folder: it is here, or ingest says it is not
        return source
    cols = source["columns"]
    n = min(source.get("limit") or ROWS[source.get("split", "train")], ROWS[source.get("split", "train")])
    path = folder / f"source-{index}-{Path(source['path']).name}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps(_row(source, cols, index, i)) + "\n")
    return {**source, "path": str(path), "format": "jsonl", "hf_split": None, "hf_config": None}


def _row(source: dict[str, Any], cols: dict[str, Any], index: int, i: int) -> dict[str, Any]:
    """A record in the source's own columns: arithmetic for math and the rest, a small function with
    its tests for code. Numbers differ per source and row, so dedup and decontamination keep them."""
    a, b = 7 * index + i + 2, 3 * i + index + 5
    row: dict[str, Any] = {}
    if source.get("category") == "code":
        name = f"add_{a}"
        row[cols["question"]] = f"Write a function {name}(x) that returns x plus {a}."
        if cols.get("test_cases"):
            row[cols["test_cases"]] = [f"assert {name}(1) == {1 + a}", f"assert {name}({b}) == {a + b}"]
    else:
        row[cols["question"]] = f"What is {a} times {b} plus {i}? Give the number."
        if cols.get("ground_truth"):
            answer = str(a * b + i)
            row[cols["ground_truth"]] = (f"{a} x {b} = {a * b}, plus {i}.\n#### {answer}"
                                         if source.get("ground_truth_regex") else answer)
    return row


# ---------------------------------------------------------------- student

def _student(student: Student, folder: Path) -> dict[str, Any]:
    """A small model of the student's architecture (from its name or id), random weights, SmolLM2's
    tokenizer: a transformers folder to train, and its GGUF to evaluate the base from."""
    family = student_family(student)
    hf_dir, gguf = folder / f"student-{family}", folder / f"student-{family}.gguf"
    if not gguf.is_file():
        build_student(family, hf_dir, gguf)
    return {"name": student.name, "hf_model": str(hf_dir), "model": {"path": str(gguf)}}


