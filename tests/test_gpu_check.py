"""bench/gpu_check.sh, the check for the lent GPU machine: what can be run without one. The folder's
size limit, the dry run's checks, the wheel trimming, and the export half of the run (merge and GGUF
through the carried tokenizer) on a small qwen2, loaded back by llama.cpp."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def prepared_looking(folder: Path) -> Path:
    """A folder with every file the run needs, by name (the wheels empty)."""
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    for spec in gpu_check().WHEELS:
        name, version = spec.split("==")
        (wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    (folder / "tokenizer.gguf").write_bytes(b"")
    return folder


def test_the_script_passes_shellcheck() -> None:
    out = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_the_dry_run_prints_the_plan_or_names_what_is_missing(tmp_path: Path) -> None:
    folder = prepared_looking(tmp_path / "gc")
    out = sh("--run", "--dry-run", "--dir", str(folder), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "20 QLoRA steps through Unsloth, then through peft" in out.stdout
    assert "qwen2.5-1.5b" in out.stdout and not (tmp_path / "out").exists()  # nothing run, nothing written
    next((folder / "wheels").glob("unsloth_zoo-*")).unlink()
    out = sh("--run", "--dry-run", "--dir", str(folder))
    assert out.returncode == 2 and "lacks unsloth_zoo" in out.stderr
    out = sh("--run", "--dry-run", "--dir", str(tmp_path / "none"))
    assert out.returncode == 2 and "does not exist" in out.stderr and len(out.stderr.splitlines()) == 1
    assert sh("--frobnicate").returncode == 2


def test_the_prepared_folder_must_fit_what_the_machine_carries(tmp_path: Path) -> None:
    folder = tmp_path / "gc"
    folder.mkdir()
    (folder / "big.whl").write_bytes(b"\0" * (3 << 20))
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "size", "--dir", str(folder)]
    over = subprocess.run([*cmd, "--limit-mib", "2"], capture_output=True, text=True)
    assert over.returncode != 0 and "over the 2 MiB" in over.stderr
    assert subprocess.run([*cmd, "--limit-mib", "4"], capture_output=True).returncode == 0


def test_trimming_a_wheel_drops_the_files_and_their_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/libpkg_cuda118.so", "x" * 1000)
        z.writestr("pkg/libpkg_cuda130.so", "y")
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,0\npkg/libpkg_cuda118.so,,1000\n"
                                               "pkg/libpkg_cuda130.so,,1\npkg-1.0.dist-info/RECORD,,\n")
    gpu_check().trim_wheel(wheel, lambda name: "cuda118" in name)
    with zipfile.ZipFile(wheel) as z:
        names = sorted(z.namelist())
        assert names == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/libpkg_cuda130.so"]
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert "cuda118" not in record and "cuda130" in record


@pytest.mark.slow
def test_the_peft_and_export_half_of_the_run_on_a_cpu(tmp_path: Path) -> None:
    """The tokenizer `prepare` carries, a qwen2 student built from a config as the run builds it (here
    tiny), the run's peft QLoRA steps (bitsandbytes NF4 on a CPU), the adapter merged and the GGUF
    written by the project's writer: llama.cpp reads it back with the same tokens."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    gc = gpu_check()
    gc.write_tokenizer(tmp_path / "tokenizer", tmp_path / "tokenizer.gguf")
    assert (tmp_path / "tokenizer.gguf").stat().st_size < 8 << 20  # a tokenizer, not a model
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    student = tmp_path / "student"
    Qwen2ForCausalLM(config).save_pretrained(student)
    tok.save_pretrained(student)
    trained = gc.train("peft", student, steps=3, out=tmp_path, length=32)  # the run's peft path, on a CPU
    assert trained["quantized"] == "Linear4bit" and trained["tokens_per_s"] > 0
    assert trained["last_loss"] == trained["last_loss"]  # a number, not NaN
    result = gc.export(student, Path(trained["adapter"]), tmp_path, tmp_path / "tokenizer.gguf")
    assert result["gguf_mib"] > 0
    llm = Llama(str(tmp_path / "student.q8_0.gguf"), n_ctx=64, verbose=False)
    assert llm.n_vocab() == len(tok)
    assert llm.tokenize(b"Hello world") == tok("Hello world")["input_ids"]
    assert len(llm("Hello", max_tokens=3, temperature=0)["choices"][0]["text"]) >= 0
