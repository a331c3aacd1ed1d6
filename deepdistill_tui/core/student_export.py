"""After training: the LoRA adapter merged into the student, and the merged student as a GGUF file.

The GGUF file closes the paper's loop at home: the trained student can be the next round's teacher
through the same llama.cpp sampler. The writer is built on the ``gguf`` package (llama.cpp's own
format library). The tokenizer and every hyperparameter are copied from the GGUF the student came
from, so only the weights are new; that is why export needs a GGUF-sourced student (the CPU recipes).
A Hub student is merged and saved, and the error says how to convert it with llama.cpp's converter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Student

# Architectures whose tensors this writer lays out the way llama.cpp reads them. Llama's attention
# weights need a permutation (below); anything else is refused rather than written wrong.
SUPPORTED_ARCHS = ("llama",)
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's general.file_type codes
# Written by the writer itself or describing the old quantization: never copied from the source.
_NOT_COPIED = ("GGUF.", "general.file_type", "general.quantization_version", "general.architecture")


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
    """Write ``merged`` (a checkpoint of ``student``'s architecture) as a GGUF file at ``out``."""
    import gguf

    from deepdistill_tui.core.models import fetch

    if student.model is None:
        raise DeepDistillError(
            f"GGUF export copies the tokenizer from the student's GGUF file, and {student.name} comes from "
            f"the Hub; the merged model is at {merged}: convert it with llama.cpp's convert_hf_to_gguf.py")
    if file_type not in FILE_TYPES:
        raise DeepDistillError(f"GGUF file type {file_type!r} is not one of {', '.join(FILE_TYPES)}")
    source = gguf.GGUFReader(fetch(student.model))
    arch = str(source.fields["general.architecture"].contents())
    if arch not in SUPPORTED_ARCHS:
        raise DeepDistillError(f"GGUF export supports {', '.join(SUPPORTED_ARCHS)} students, not {arch}; "
                               f"the merged model is at {merged}")
    weights = _gguf_named_weights(merged, arch, source)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(tmp, arch)
    _copy_metadata(source, writer)
    writer.add_file_type(FILE_TYPES[file_type])
    for name in (t.name for t in source.tensors):
        writer.add_tensor(name, *_encode(weights[name], file_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _gguf_named_weights(merged: Path, arch: str, source: Any) -> dict[str, Any]:
    """The merged weights as float32 numpy arrays under llama.cpp's names, laid out as it reads them."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(merged)
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
        if name.endswith("attn_q.weight"):
            value = _unrotate(value, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            value = _unrotate(value, config.num_key_value_heads)
        out[name] = value
    if "output.weight" not in out and "output.weight" in {t.name for t in source.tensors}:
        out["output.weight"] = out["token_embd.weight"]  # tied in the checkpoint, stored apart in the source
    missing = {t.name for t in source.tensors} - out.keys()
    if missing:
        raise DeepDistillError(f"{merged}: the checkpoint lacks {len(missing)} tensors, e.g. {min(missing)}")
    return out


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


def _copy_metadata(source: Any, writer: Any) -> None:
    import gguf

    for key, field in source.fields.items():
        if key.startswith(_NOT_COPIED):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)


def _replace_dir(tmp: Path, out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
