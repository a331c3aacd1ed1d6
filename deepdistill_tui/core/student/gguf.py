"""After training: the LoRA adapter merged into the student, and the merged student as a GGUF file.

The GGUF file closes the paper's loop at home: the trained student can be the next round's teacher
through the same llama.cpp sampler. The writer is built on the ``gguf`` package (llama.cpp's own
format library): tensor names come from its name map for the architecture, hyperparameters from the
merged checkpoint's config, and the tokenizer (vocabulary, merges, special tokens, chat template) is
copied from the student's own GGUF that the recipe names, so that the exported student reads and
writes text exactly as the base did. Architectures: llama (SmolLM2, Llama) and qwen2 (Qwen2.5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Student

# transformers' model_type -> llama.cpp's architecture. Llama's attention weights need a permutation
# (below); qwen2's rotary layout is the one llama.cpp reads (NEOX). Anything else is refused rather
# than written wrong.
ARCHS = {"llama": "llama", "qwen2": "qwen2"}
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's general.file_type codes


def merge_adapter(base: str, adapter: Path, out: Path) -> Path:
    """The base checkpoint with the adapter folded into its weights, saved as a plain checkpoint."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(f".{out.name}.partial")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp)
    _replace_dir(tmp, out)
    return out


def export_gguf(student: Student, merged: Path, out: Path, file_type: str = "f16") -> Path:
    """Write ``merged`` (a llama or qwen2 checkpoint) as a GGUF file at ``out``, with the tokenizer of
    ``student``'s GGUF."""
    import gguf
    from transformers import AutoConfig

    from deepdistill_tui.core.weights.files import fetch

    if student.model is None:
        raise DeepDistillError(
            f"GGUF export copies the tokenizer from the student's GGUF file, and the recipe names none for "
            f"{student.name} (training.student.model); the merged model is at {merged}")
    if file_type not in FILE_TYPES:
        raise DeepDistillError(f"GGUF file type {file_type!r} is not one of {', '.join(FILE_TYPES)}")
    config = AutoConfig.from_pretrained(merged)
    arch = ARCHS.get(config.model_type)
    if arch is None:
        raise DeepDistillError(f"GGUF export supports {', '.join(ARCHS)} students, not {config.model_type}; "
                               f"the merged model is at {merged}")
    source = gguf.GGUFReader(fetch(student.model))
    weights = _gguf_named_weights(merged, arch, config)
    _check_vocab(source, weights["token_embd.weight"], merged)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_name(student.name)
    _add_hyperparameters(writer, config)
    _copy_tokenizer(source, writer)
    writer.add_file_type(FILE_TYPES[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, value in weights.items():
        writer.add_tensor(name, *_encode(value, file_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _add_hyperparameters(writer: Any, config: Any) -> None:
    """What llama.cpp reads to build the graph, from the checkpoint's own config."""
    rope = _rope(config)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise DeepDistillError(f"GGUF export does not write {kind!r} rope scaling yet")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _rope(config: Any) -> dict[str, Any]:
    """Rotary settings wherever this transformers keeps them: v5 folds ``rope_theta`` and the scaling
    into ``rope_parameters``; v4 has a ``rope_theta`` attribute and ``rope_scaling``. Reading only the
    v4 attribute under v5 silently wrote llama.cpp's default base (10000 instead of SmolLM2's 100000)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope.update(getattr(config, "rope_scaling", None) or {})
    if getattr(config, "rope_theta", None) is not None:
        rope.setdefault("rope_theta", config.rope_theta)
    return rope


def _copy_tokenizer(source: Any, writer: Any) -> None:
    """Every tokenizer.* key of the source GGUF: vocabulary, merges, special ids, chat template."""
    import gguf

    for key, field in source.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)


def _check_vocab(source: Any, embeddings: Any, merged: Path) -> None:
    tokens = source.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise DeepDistillError("the student's GGUF has no tokenizer to copy")
    if len(tokens.data) != embeddings.shape[0]:
        raise DeepDistillError(f"{merged}: {embeddings.shape[0]} embedding rows, but the student's GGUF "
                               f"tokenizer has {len(tokens.data)} tokens; they must be the same model")


def _gguf_named_weights(merged: Path, arch: str, config: Any) -> dict[str, Any]:
    """The merged weights as float32 numpy arrays under llama.cpp's names, laid out as it reads them,
    in block order."""
    import gguf
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    state: dict[str, Any] = {}
    for part in sorted(merged.glob("*.safetensors")):
        state.update(load_file(part))
    out = {}
    for key, value in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise DeepDistillError(f"{merged}: no GGUF name for tensor {key}")
        value = value.astype("float32")
        if arch == "llama" and name.endswith("attn_q.weight"):
            value = _unrotate(value, config.num_attention_heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            value = _unrotate(value, config.num_key_value_heads)
        out[name] = value
    if getattr(config, "tie_word_embeddings", False):
        out.pop("output.weight", None)  # llama.cpp reads the embeddings as the output head when absent
    elif "output.weight" not in out:
        raise DeepDistillError(f"{merged}: no output head (lm_head) and the embeddings are not tied")
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]) if parts[0] == "blk" else (-1 if name.startswith("token_embd") else 1 << 30), name)


def _unrotate(w: Any, heads: int) -> Any:
    """transformers keeps each head's rotary pairs as two halves; llama.cpp wants them interleaved."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: Any, file_type: str) -> tuple[Any, Any, Any]:
    """(data, raw_shape, raw_dtype) for GGUFWriter.add_tensor. Norms and other vectors stay float32."""
    import gguf
    import numpy as np

    if w.ndim == 1 or file_type == "f32":
        return np.ascontiguousarray(w, dtype=np.float32), None, None
    if file_type == "f16":
        return np.ascontiguousarray(w, dtype=np.float16), None, None
    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(w, qtype), None, qtype  # the writer reads the shape from the bytes


def _replace_dir(tmp: Path, out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
