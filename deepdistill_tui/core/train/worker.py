"""The training subprocess: SFT of the student (docs/PAPER.md section 6) with TRL's SFTTrainer.

    python -m deepdistill_tui.core.train RUN_DIR [--smoke] [--engine deepspeed|fsdp|ddp]

It reads RUN_DIR/config.json (``RunConfig``), streams JSON-lines events on its stdout (its libraries'
output goes to stderr, the run's log) and checkpoints under RUN_DIR/checkpoints, so a run killed at any
moment resumes from its last complete checkpoint. One trainer code path on a GPU or a CPU; backends:
Unsloth (QLoRA through bitsandbytes) when a CUDA GPU and unsloth are present, else peft LoRA (QLoRA on
a student loaded in NF4 by bitsandbytes, on a CPU too) or full fine-tuning through plain transformers.
The backend, quantization, compute dtype and weights loaded are reported and stored.

Unsloth patches transformers and TRL when it is imported, so with that backend it is imported before
anything else of the training stack (``import_stack``); every other heavy import happens after.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import (
    Emit,
    TrainCheckpoint,
    TrainExported,
    TrainFailed,
    TrainFinished,
    TrainNotice,
    TrainStarted,
    TrainStep,
    to_json,
)
from deepdistill_tui.core.recipe import Recipe, TrainingConfig
from deepdistill_tui.core.train.config import DistributedSettings, RunConfig, TrainBackend

# ---------------------------------------------------------------- data


def training_rows(store: Any, recipe: Recipe, selection: str) -> list[dict[str, Any]]:
    """Prompt-completion conversations: the loss falls on the assistant's part only."""
    from deepdistill_tui.core.difficulty.export import iter_records

    rows = [{"prompt": rec["messages"][:1], "completion": rec["messages"][1:]}
            for rec in iter_records(store, recipe, selection)]
    if not rows:
        raise DeepDistillError(f"selection {selection!r} has no members to train on")
    return rows


def file_rows(path: Path) -> list[dict[str, Any]]:
    """The same prompt-completion rows from an exported JSONL file."""
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            try:
                messages = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DeepDistillError(f"{path}:{n}: not an exported record with `messages`") from None
            rows.append({"prompt": messages[:1], "completion": messages[1:]})
    if not rows:
        raise DeepDistillError(f"{path} has no records to train on")
    return rows


def config_rows(config: RunConfig, recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    if config.data_file:
        return file_rows(run_dir / config.data_file)
    from deepdistill_tui.core.store.database import Store

    assert config.db and config.selection
    with Store(config.db) as store:
        return training_rows(store, recipe, config.selection)


# ---------------------------------------------------------------- backend


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(cfg: TrainingConfig) -> TrainBackend:
    return TrainBackend.choose(cfg, cuda_available(), importlib.util.find_spec("unsloth") is not None)


def import_stack(backend: TrainBackend, emit: Emit) -> TrainBackend:
    """Unsloth first when it trains: its patches apply to transformers, TRL and peft only if it is
    imported before them (it warns, and its faster kernels and precision handling are skipped, else).
    An Unsloth that does not import is one line, and peft trains instead; the backend that will train
    is returned."""
    if backend.unsloth:
        try:
            importlib.import_module("unsloth")
        except Exception as exc:  # any failure of a third-party import: the run goes on without it
            backend = _fall_back(backend, f"unsloth cannot be imported ({type(exc).__name__}: "
                                          f"{str(exc)[:200]})", emit)
    if backend.quantization and importlib.util.find_spec("bitsandbytes") is None:
        raise DeepDistillError("training.method qlora loads the student in 4 bits through bitsandbytes, "
                               "which is not installed: pip install bitsandbytes==0.50.2 (the gpu extra), "
                               "or set training.method: lora")
    importlib.import_module("trl")
    return backend


def _fall_back(backend: TrainBackend, why: str, emit: Emit) -> TrainBackend:
    plain = backend.without_unsloth()
    quant = f"{backend.quantization.upper()} " if backend.quantization else ""
    emit(TrainNotice(f"{why}; training with peft {quant}{'QLoRA' if quant else 'LoRA'} instead"))
    return plain


def bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def compute_dtype(backend: TrainBackend) -> Any:
    """bf16 where the GPU has it, else fp16 on a GPU; fp32 on a CPU (its half-precision matmuls are
    slow or missing)."""
    import torch

    return torch.float32 if backend.on_cpu else (torch.bfloat16 if bf16_supported() else torch.float16)


def load_model(recipe: Recipe, backend: TrainBackend,
               emit: Emit) -> tuple[Any, Any, Any, str, TrainBackend]:
    """(model, tokenizer, peft config or None, the weights loaded, the backend that trains): an
    Unsloth that cannot load the student gives way to peft, with one line saying why."""
    from deepdistill_tui.core.student.checkpoint import student_checkpoint

    cfg = recipe.training
    path = student_checkpoint(cfg.student)
    if backend.unsloth:
        try:
            return (*_load_unsloth(cfg, path), backend)
        except Exception as exc:  # its own loader failed on this student: plain peft can still train it
            backend = _fall_back(backend, f"unsloth cannot load {path} ({type(exc).__name__}: "
                                          f"{str(exc)[:200]})", emit)
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = compute_dtype(backend)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if backend.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        # QLoRA as its paper has it: NF4 with double quantization, computing in `dtype`.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = "cpu" if backend.on_cpu else {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    peft = None if cfg.method == "full" else LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    return model, tok, peft, path, backend


def _load_unsloth(cfg: TrainingConfig, path: str) -> tuple[Any, Any, Any, str]:
    from unsloth import FastLanguageModel

    # use_exact_model_name: Unsloth otherwise swaps a Hub id for its own pre-quantized repository,
    # and the merge and evaluation (which load the recipe's model) would start from other weights.
    model, tok = FastLanguageModel.from_pretrained(path, max_seq_length=cfg.max_length,
                                                   load_in_4bit=cfg.method == "qlora",
                                                   use_exact_model_name=True)
    loaded = str(getattr(model.config, "_name_or_path", "") or path)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=_unsloth_targets(cfg), use_gradient_checkpointing="unsloth")
    return model, tok, None, loaded


def _unsloth_targets(cfg: TrainingConfig) -> list[str]:
    if cfg.lora.target_modules != "all-linear":
        return list(cfg.lora.target_modules)
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- the trainer


def sft_config(cfg: TrainingConfig, run_dir: Path, backend: TrainBackend, seed: int,
               dist: DistributedSettings | None = None) -> Any:
    """TRL's config from the recipe; ``dist`` carries a cluster run's engine settings and, under
    torchrun on CPU, the gloo backend."""
    from trl import SFTConfig

    dist = dist or DistributedSettings()
    extra: dict[str, Any] = {}
    if dist.deepspeed:
        extra["deepspeed"] = dist.deepspeed
    if dist.fsdp:
        extra["fsdp"] = dist.fsdp
        extra["fsdp_config"] = dist.fsdp_config
    if world_size() > 1 and backend.on_cpu:
        extra["ddp_backend"] = "gloo"
    if dist.gradient_checkpointing:
        extra["gradient_checkpointing"] = True
    bf16 = not backend.on_cpu and bf16_supported()
    return SFTConfig(
        **extra,
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a share of the total steps
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        packing=cfg.packing,
        # Unpacked, a batch pads to its longest example: batches of like lengths pad far less (on the
        # tiny recipe's mix of one-line answers and code, a third of the tokens were padding).
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        completion_only_loss=True,
        logging_steps=1,
        save_steps=cfg.save_steps if cfg.save_steps < 1 else int(cfg.save_steps),
        save_total_limit=2,
        report_to="none",
        use_cpu=backend.on_cpu,
        bf16=bf16,
        fp16=not backend.on_cpu and not bf16,
        seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _event_callback(emit: Emit, started: float) -> Any:
    from transformers import TrainerCallback

    class Events(TrainerCallback):
        """A TrainStep per logged step, with the learning rate that step applied: the Trainer logs the
        scheduler's next rate (0 after the last step of a cosine schedule), not the one it used."""

        applied: float | None = None

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            optimizer = kw.get("optimizer")
            if optimizer is not None:
                self.applied = float(optimizer.param_groups[0]["lr"])

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            elapsed = time.monotonic() - started
            done = max(state.global_step, 1)
            eta = elapsed / done * (state.max_steps - state.global_step) if state.max_steps else None
            rate = self.applied if self.applied is not None else logs.get("learning_rate")
            emit(TrainStep(state.global_step, state.max_steps, float(logs["loss"]), rate,
                           logs.get("epoch"), _tokens_per_s(state, elapsed), eta))

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            emit(TrainCheckpoint(state.global_step))

    return Events()


def _tokens_per_s(state: Any, elapsed: float) -> float | None:
    seen = getattr(state, "num_input_tokens_seen", 0)
    return seen / elapsed if seen and elapsed else None


def _fused_head_available() -> bool:
    from trl.trainer import utils

    return getattr(utils, "_ChunkedLogProbFunction", None) is not None


def _plain_loss_trainer() -> Any:
    """SFTTrainer with transformers' own causal-LM loss on the collator's labels.

    TRL's fused LM head needs its Triton kernels, which the CPU build of torch does not ship; the
    collator already masks the prompt with -100, so the plain loss is the same completion-only loss.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def trainer_class() -> Any:
    from trl import SFTTrainer

    return SFTTrainer if _fused_head_available() else _plain_loss_trainer()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that reports and writes results."""
    return int(os.environ.get("RANK", "0")) == 0


def smoke_sized(recipe: Recipe, dist: DistributedSettings) -> tuple[Recipe, DistributedSettings, int]:
    """``--smoke`` shrinks sizes only: a few short steps, micro-batch 1, no accumulation, a frequent
    checkpoint, 32 rows. Where there is no CUDA, DeepSpeed and FSDP (GPU engines) give way to plain
    DDP over gloo; everything else, the code path included, is the full run's."""
    training = recipe.training.model_copy(update={
        "max_steps": 4, "save_steps": 2, "max_length": min(recipe.training.max_length, 128),
        "micro_batch": 1, "grad_accum": 1, "packing": False})
    if not cuda_available():
        dist = dist.without_gpu_engines()
    return recipe.model_copy(update={"training": training}), dist, 32


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest *complete* checkpoint. A kill during a save leaves a directory without
    trainer_state.json (the Trainer writes it last): such a directory is skipped, and removed by the
    main process (the other ranks of a cluster run only skip it)."""
    ckpt = run_dir / "checkpoints"
    found = sorted(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                   if p.name.split("-")[-1].isdigit() else -1, reverse=True) if ckpt.is_dir() else []
    for path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, json.JSONDecodeError):
            if is_main_process():
                shutil.rmtree(path, ignore_errors=True)
    return None


def run_training(run_dir: Path, emit: Emit, smoke: bool = False, engine: str | None = None) -> dict[str, Any]:
    """Train from RUN_DIR/config.json; the summary is also written to RUN_DIR/result.json."""
    config = RunConfig.read(run_dir)
    recipe = config.recipe
    dist = config.distributed.overridden(engine, run_dir)
    limit = None
    if smoke:
        recipe, dist, limit = smoke_sized(recipe, dist)
    backend = import_stack(choose_backend(recipe.training), emit)
    from datasets import Dataset

    rows = config_rows(config, recipe, run_dir)[:limit]
    resume = last_checkpoint(run_dir)
    # The arguments come first: with a ZeRO-3 config they make from_pretrained load every weight
    # already partitioned across ranks, instead of a whole copy per process.
    args = sft_config(recipe.training, run_dir, backend, recipe.seed, dist)
    args.include_num_input_tokens_seen = True
    model, tok, peft, loaded, backend = load_model(recipe, backend, emit)
    emit(TrainStarted(backend.name, len(rows), resume, world_size(), dist.engine(world_size()), loaded,
                      backend.quantization, str(compute_dtype(backend)).removeprefix("torch.")))
    trainer = trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tok, peft_config=peft,
                              callbacks=[_event_callback(emit, time.monotonic())])
    if resume and world_size() > 1 and backend.on_cpu:
        _accept_indexed_cpu_locations()
    result = trainer.train(resume_from_checkpoint=resume)
    final = run_dir / ("adapter" if backend.adapter else "model")
    trainer.save_model(str(final))  # every rank takes part (sharded weights are gathered), rank 0 writes
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"backend": backend.name, "model_loaded": loaded, "output": str(final),
               "quantization": backend.quantization,
               "dtype": str(compute_dtype(backend)).removeprefix("torch."),
               "steps": trainer.state.global_step, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "train_loss": result.training_loss,
               "resumed_from": resume, "examples": len(rows),
               "tokens_per_s": _tokens_per_s(trainer.state, result.metrics.get("train_runtime") or 0.0)}
    if not is_main_process():
        return summary
    tok.save_pretrained(str(final))
    del trainer, model  # the merge loads the student again, in float32
    summary.update(export_outputs(recipe, run_dir, final, emit))
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    emit(TrainFinished(summary))
    return summary


def _accept_indexed_cpu_locations() -> None:
    """Resuming multi-process CPU training, the Trainer loads the optimizer state with map_location
    set to its device, ``cpu:0``, a location torch.load has no restorer for. Tensors bound for
    ``cpu:N`` are already where they belong, so a restorer that takes them as they are suffices."""
    import torch

    def restore(storage: Any, location: str) -> Any:
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(99, lambda _obj: None, restore)


def export_outputs(recipe: Recipe, run_dir: Path, final: Path, emit: Emit) -> dict[str, str]:
    """The merged model and its GGUF file, as the recipe asks; paths keyed "merged" and "gguf"."""
    from deepdistill_tui.core.student.checkpoint import student_checkpoint
    from deepdistill_tui.core.student.gguf import export_gguf, merge_adapter

    cfg = recipe.training
    if not (cfg.merge or cfg.gguf):
        return {}
    merged = final
    if final.name == "adapter":
        merged = merge_adapter(student_checkpoint(cfg.student), final, run_dir / "merged")
    outputs = {"merged": str(merged)}
    if cfg.gguf:
        gguf = export_gguf(cfg.student, merged, run_dir / f"student-{cfg.gguf}.gguf", cfg.gguf)
        outputs["gguf"] = str(gguf)
    emit(TrainExported(outputs["merged"], outputs.get("gguf")))
    return outputs


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deepdistill_tui.core.train",
                                 description="Train from RUN_DIR/config.json (also under torchrun).")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--smoke", action="store_true", help="shrink sizes only: a few short steps")
    ap.add_argument("--engine", choices=("deepspeed", "fsdp", "ddp"),
                    help="override the config's engine (fsdp when launched by accelerate with FSDP)")
    opts = ap.parse_args(argv)
    # Events own the original stdout; everything the libraries print goes to stderr (the run's log).
    events: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    main_process = is_main_process()

    def emit(event: Any) -> None:
        if main_process:  # one report per run, not one per rank
            events.write(to_json(event) + "\n")

    try:
        run_training(opts.run_dir, emit, smoke=opts.smoke, engine=opts.engine)
    except DeepDistillError as exc:
        emit(TrainFailed(str(exc)))
        return 2
    return 0
