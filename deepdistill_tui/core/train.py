"""Student SFT (PAPER.md section 6): one trainer code path, TRL's SFTTrainer, on a GPU or a CPU.

    python -m deepdistill_tui.core.train RUN_DIR      # what `deepdistill-tui train` starts

``start_training`` (in the caller) writes RUN_DIR/config.json and starts this module as a subprocess;
the subprocess streams JSON-lines events on its stdout (its own logs go to stderr) and checkpoints
under RUN_DIR/checkpoints, so a run killed at any moment resumes from its last checkpoint. Backends:
Unsloth QLoRA (4-bit through bitsandbytes) when a CUDA GPU and unsloth are present, else peft LoRA
(or full fine-tuning) through plain transformers; the backend is logged and stored.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Recipe, TrainingConfig

Emit = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------- data


def training_rows(store: Any, recipe: Recipe, selection: str) -> list[dict[str, Any]]:
    """Prompt-completion conversations: the loss falls on the assistant's part only."""
    from deepdistill_tui.core.export import iter_records

    rows = [{"prompt": rec["messages"][:1], "completion": rec["messages"][1:]}
            for rec in iter_records(store, recipe, selection)]
    if not rows:
        raise DeepDistillError(f"selection {selection!r} has no members to train on")
    return rows


def file_rows(path: Path) -> list[dict[str, Any]]:
    """The same prompt-completion rows from an exported JSONL file (how a cluster run gets its data:
    nodes read a file on the shared filesystem, not the SQLite store)."""
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


# ---------------------------------------------------------------- backend


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(cfg: TrainingConfig) -> str:
    """unsloth (CUDA + unsloth installed), peft-cuda, or peft-cpu; `full` replaces peft- with full-."""
    if cuda_available():
        if cfg.method != "full" and importlib.util.find_spec("unsloth") is not None:
            return "unsloth"
        return "full-cuda" if cfg.method == "full" else "peft-cuda"
    return "full-cpu" if cfg.method == "full" else "peft-cpu"


def load_model(recipe: Recipe, backend: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft config or None)."""
    from deepdistill_tui.core.student import student_checkpoint

    cfg = recipe.training
    path = student_checkpoint(cfg.student)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(path, max_seq_length=cfg.max_length,
                                                       load_in_4bit=cfg.method == "qlora")
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=_unsloth_targets(cfg), use_gradient_checkpointing="unsloth")
        return model, tok, None
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if backend.endswith("cuda") else torch.float32}
    if backend == "peft-cuda" and cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    peft = None if cfg.method == "full" else LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    return model, tok, peft


def _unsloth_targets(cfg: TrainingConfig) -> list[str]:
    if cfg.lora.target_modules != "all-linear":
        return list(cfg.lora.target_modules)
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- the worker


def sft_config(cfg: TrainingConfig, run_dir: Path, backend: str, seed: int,
               dist: dict[str, Any] | None = None) -> Any:
    """TRL's config from the recipe; ``dist`` carries a cluster run's engine settings (a DeepSpeed
    config file, or FSDP) and, under torchrun on CPU, the gloo backend."""
    from trl import SFTConfig

    dist = dist or {}
    extra: dict[str, Any] = {}
    if dist.get("deepspeed"):
        extra["deepspeed"] = dist["deepspeed"]
    if dist.get("fsdp"):
        extra["fsdp"] = dist["fsdp"]
        extra["fsdp_config"] = dist.get("fsdp_config", {})
    if world_size() > 1 and backend.endswith("cpu"):
        extra["ddp_backend"] = "gloo"
    if dist.get("gradient_checkpointing"):
        extra["gradient_checkpointing"] = True
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
        completion_only_loss=True,
        logging_steps=1,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=backend.endswith("cpu"),
        bf16=backend != "unsloth" and backend.endswith("cuda"),
        seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _event_callback(emit: Emit, started: float) -> Any:
    from transformers import TrainerCallback

    class Events(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            elapsed = time.monotonic() - started
            done = max(state.global_step, 1)
            eta = elapsed / done * (state.max_steps - state.global_step) if state.max_steps else None
            emit({"event": "train_step", "step": state.global_step, "max_steps": state.max_steps,
                  "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                  "epoch": logs.get("epoch"), "tokens_per_s": _tokens_per_s(state, elapsed),
                  "eta_s": eta})

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            emit({"event": "train_checkpoint", "step": state.global_step})

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


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that reports and writes results."""
    return int(os.environ.get("RANK", "0")) == 0


def smoke_sized(recipe: Recipe, dist: dict[str, Any]) -> tuple[Recipe, dict[str, Any], int]:
    """``--smoke`` shrinks sizes only: a few short steps, micro-batch 1, no accumulation, a frequent
    checkpoint, 32 rows. Where there is no CUDA, DeepSpeed and FSDP (GPU engines) give way to plain
    DDP over gloo; everything else, the code path included, is the full run's."""
    training = recipe.training.model_copy(update={
        "max_steps": 4, "save_steps": 2, "max_length": min(recipe.training.max_length, 128),
        "micro_batch": 1, "grad_accum": 1, "packing": False})
    if not cuda_available():
        dist = {k: v for k, v in dist.items() if k not in ("deepspeed", "fsdp", "fsdp_config")}
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
    """Train from RUN_DIR/config.json: data from the store's selection (``db`` + ``selection``, a local
    run) or from an exported file (``data_file``, a cluster run, relative to RUN_DIR)."""
    from datasets import Dataset
    from trl import SFTTrainer

    config = json.loads((run_dir / "config.json").read_text())
    recipe = Recipe.model_validate(config["recipe"])
    dist = _engine_settings(config.get("distributed", {}), run_dir, engine)
    limit = None
    if smoke:
        recipe, dist, limit = smoke_sized(recipe, dist)
    rows = _config_rows(config, recipe, run_dir)[:limit]
    backend = choose_backend(recipe.training)
    resume = last_checkpoint(run_dir)
    emit({"event": "train_started", "backend": backend, "examples": len(rows), "resume_from": resume,
          "world_size": world_size(), "engine": _engine(dist)})
    # The arguments come first: with a ZeRO-3 config they make from_pretrained load every weight
    # already partitioned across ranks, instead of a whole copy per process.
    args = sft_config(recipe.training, run_dir, backend, recipe.seed, dist)
    args.include_num_input_tokens_seen = True
    model, tok, peft = load_model(recipe, backend)
    trainer_cls = SFTTrainer if _fused_head_available() else _plain_loss_trainer()
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=peft,
                          callbacks=[_event_callback(emit, time.monotonic())])
    if resume and world_size() > 1 and backend.endswith("cpu"):
        _accept_indexed_cpu_locations()
    result = trainer.train(resume_from_checkpoint=resume)
    final = run_dir / ("adapter" if peft is not None or backend == "unsloth" else "model")
    trainer.save_model(str(final))  # every rank takes part (sharded weights are gathered), rank 0 writes
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"backend": backend, "output": str(final), "steps": trainer.state.global_step,
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "train_loss": result.training_loss, "resumed_from": resume}
    if not is_main_process():
        return summary
    tok.save_pretrained(str(final))
    del trainer, model  # the merge loads the student again, in float32
    summary.update(export_outputs(recipe, run_dir, final, emit))
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    emit({"event": "train_finished", **summary})
    return summary


def _accept_indexed_cpu_locations() -> None:
    """Resuming multi-process CPU training, the Trainer loads the optimizer state with map_location
    set to its device, ``cpu:0``, a location torch.load has no restorer for. Tensors bound for
    ``cpu:N`` are already where they belong, so a restorer that takes them as they are suffices."""
    import torch

    def restore(storage: Any, location: str) -> Any:
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(99, lambda _obj: None, restore)


def _config_rows(config: dict[str, Any], recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    if config.get("data_file"):
        return file_rows(run_dir / config["data_file"])
    from deepdistill_tui.core.store import Store

    with Store(config["db"]) as store:
        return training_rows(store, recipe, config["selection"])


def _engine_settings(dist: dict[str, Any], run_dir: Path, engine: str | None) -> dict[str, Any]:
    """The config's engine settings, with ``--engine`` overriding (fsdp: accelerate's config supplies
    the sharding, so the DeepSpeed file is dropped; ddp: neither). Relative paths are from RUN_DIR."""
    dist = dict(dist)
    if engine in ("fsdp", "ddp"):
        dist.pop("deepspeed", None)
    if engine == "ddp":
        dist.pop("fsdp", None)
    if dist.get("deepspeed") and not Path(dist["deepspeed"]).is_absolute():
        dist["deepspeed"] = str((run_dir / dist["deepspeed"]).resolve())
    return dist


def _engine(dist: dict[str, Any]) -> str:
    if dist.get("deepspeed"):
        return "deepspeed"
    if dist.get("fsdp"):
        return "fsdp"
    return "ddp" if world_size() > 1 else "single"


def export_outputs(recipe: Recipe, run_dir: Path, final: Path, emit: Emit) -> dict[str, str]:
    """The merged model and its GGUF file, as the recipe asks; paths keyed "merged" and "gguf"."""
    from deepdistill_tui.core.student import student_checkpoint
    from deepdistill_tui.core.student_export import export_gguf, merge_adapter

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
    emit({"event": "train_exported", **outputs})
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

    def emit(event: dict[str, Any]) -> None:
        if main_process:  # one report per run, not one per rank
            events.write(json.dumps(event, default=str) + "\n")

    try:
        run_training(opts.run_dir, emit, smoke=opts.smoke, engine=opts.engine)
    except DeepDistillError as exc:
        emit({"event": "train_failed", "error": str(exc)})
        return 2
    return 0


# ---------------------------------------------------------------- the caller's side


def read_events(stream: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _terminate_on(stop: threading.Event, proc: Any) -> None:
    while proc.poll() is None:
        if stop.wait(0.5):
            proc.terminate()
            return


def resumable_run(store: Any, recipe: Recipe, selection: str) -> tuple[str, Path] | None:
    """The newest unfinished train run of this recipe and selection that has a run directory."""
    for run_id, args in store.conn.execute(
            "SELECT run_id, args FROM runs WHERE command = 'train' AND recipe_name = ?"
            " AND status IN ('running', 'failed', 'interrupted') ORDER BY started_at DESC",
            (recipe.name,)):
        a = json.loads(args)
        if a.get("selection") == selection and Path(a.get("run_dir", "")).is_dir():
            return run_id, Path(a["run_dir"])
    return None


def train(store: Any, recipe: Recipe, selection: str, *, emit: Emit, fresh: bool = False,
          runs_dir: Path | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run (or resume) SFT in a subprocess; its events go to ``emit``; the runs row tracks it.
    Setting ``stop`` terminates the subprocess; the run stays resumable from its last checkpoint."""
    import subprocess

    if store.scalar("SELECT 1 FROM selections WHERE name = ?", (selection,)) is None:
        raise DeepDistillError(f"no selection named {selection!r}; run `select` first")
    previous = None if fresh else resumable_run(store, recipe, selection)
    if previous:
        run_id, run_dir = previous
        store.finish_run(run_id, "running")
        emit({"event": "train_resuming", "run_id": run_id})
    else:
        base = runs_dir or store.path.resolve().parent / "runs"
        run_id = store.start_run("train", recipe.name, recipe.to_json(), {"selection": selection})
        run_dir = base / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        store.conn.execute("UPDATE runs SET args = ? WHERE run_id = ?",
                           (json.dumps({"selection": selection, "run_dir": str(run_dir)}), run_id))
        (run_dir / "config.json").write_text(json.dumps(
            {"recipe": recipe.model_dump(mode="json"), "selection": selection,
             "db": str(store.path.resolve()), "run_id": run_id}, indent=2))
    emit({"event": "train_run", "run_id": run_id, "run_dir": str(run_dir)})
    with (run_dir / "train.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deepdistill_tui.core.train", str(run_dir)],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdout is not None
        summary: dict[str, Any] | None = None
        error = None
        if stop is not None:
            threading.Thread(target=_terminate_on, args=(stop, proc), daemon=True).start()
        try:
            for event in read_events(proc.stdout):
                emit(event)
                if event["event"] == "train_finished":
                    summary = event
                elif event["event"] == "train_failed":
                    error = event["error"]
            code = proc.wait()
        except BaseException:
            proc.terminate()  # Ctrl-C: the child stops; its last checkpoint stays for a resume
            proc.wait()
            store.finish_run(run_id, "interrupted")
            raise
    if summary is None and stop is not None and stop.is_set():
        store.finish_run(run_id, "interrupted")
        raise DeepDistillError(f"training run {run_id} stopped; train again to resume from its last "
                               "checkpoint")
    if summary is None:
        error = error or (f"training exited with status {code}: {_last_line(run_dir / 'train.log')} "
                          f"(log: {run_dir / 'train.log'})")
        store.finish_run(run_id, "failed", error=error)
        raise DeepDistillError(error)
    store.finish_run(run_id, "ok", summary)
    return {"run_id": run_id, "run_dir": str(run_dir), **summary}


if __name__ == "__main__":
    raise SystemExit(main())
