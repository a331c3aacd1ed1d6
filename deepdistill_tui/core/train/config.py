"""What crosses the training subprocess boundary: the run's config file and the backend it trains on.

``RUN_DIR/config.json`` is written by the launcher (a local run: the store and a selection) or by a
cluster bundle (an exported data file and the distributed engine's settings), and read by the worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Recipe, TrainingConfig


class DistributedSettings(BaseModel):
    """A cluster run's engine: a DeepSpeed config file, or FSDP through accelerate; plain DDP else."""

    model_config = ConfigDict(extra="forbid")

    deepspeed: str | None = None
    """DeepSpeed config JSON, relative to RUN_DIR (ZeRO-3 in the bundles)."""
    fsdp: str | None = None
    """FSDP options as the Trainer takes them (``"full_shard auto_wrap"``)."""
    fsdp_config: dict[str, Any] = {}
    gradient_checkpointing: bool = False

    def engine(self, world_size: int) -> str:
        if self.deepspeed:
            return "deepspeed"
        if self.fsdp:
            return "fsdp"
        return "ddp" if world_size > 1 else "single"

    def overridden(self, engine: str | None, run_dir: Path) -> DistributedSettings:
        """``--engine`` over the file (fsdp: accelerate's config supplies the sharding, so the DeepSpeed
        file is dropped; ddp: neither), and the DeepSpeed path made absolute."""
        update: dict[str, Any] = {}
        if engine in ("fsdp", "ddp"):
            update["deepspeed"] = None
        if engine == "ddp":
            update["fsdp"] = None
        ds = update.get("deepspeed", self.deepspeed)
        if ds and not Path(ds).is_absolute():
            update["deepspeed"] = str((run_dir / ds).resolve())
        return self.model_copy(update=update)

    def without_gpu_engines(self) -> DistributedSettings:
        return self.model_copy(update={"deepspeed": None, "fsdp": None, "fsdp_config": {}})


class RunConfig(BaseModel):
    """RUN_DIR/config.json."""

    model_config = ConfigDict(extra="forbid")

    recipe: Recipe
    run_id: str | None = None
    db: str | None = None
    """The store whose ``selection`` is the data (a local run)."""
    selection: str | None = None
    data_file: str | None = None
    """Exported records, relative to RUN_DIR (a cluster run: nodes read the shared filesystem)."""
    stage: str | None = None
    distributed: DistributedSettings = DistributedSettings()

    @model_validator(mode="after")
    def _one_data_source(self) -> RunConfig:
        if not self.data_file and not (self.db and self.selection):
            raise ValueError("give either data_file or db and selection")
        return self

    @classmethod
    def read(cls, run_dir: Path) -> RunConfig:
        path = run_dir / "config.json"
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise DeepDistillError(f"{path}: cannot read the run's config ({exc})") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            raise DeepDistillError(f"{path}: {where}: {err['msg']}") from None

    def write(self, run_dir: Path) -> None:
        (run_dir / "config.json").write_text(self.model_dump_json(indent=2, exclude_none=True))


Method = Literal["lora", "full"]
Device = Literal["cuda", "cpu"]
Quantization = Literal["nf4"] | None


@dataclass(frozen=True)
class TrainBackend:
    """What trains: Unsloth (QLoRA/LoRA on CUDA), peft LoRA (on a 4-bit student for QLoRA), or full
    fine-tuning, on CUDA or the CPU."""

    unsloth: bool
    method: Method
    device: Device
    quantization: Quantization = None
    """nf4 for ``method: qlora``: the student's linear layers in 4 bits through bitsandbytes, on a CPU
    too (it used to train plain LoRA in fp32 there, silently)."""

    @property
    def name(self) -> str:
        return "unsloth" if self.unsloth else f"{'full' if self.method == 'full' else 'peft'}-{self.device}"

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def adapter(self) -> bool:
        """Does it save a LoRA adapter (else a whole model)?"""
        return self.method == "lora"

    def without_unsloth(self) -> TrainBackend:
        return replace(self, unsloth=False)

    @classmethod
    def choose(cls, cfg: TrainingConfig, cuda: bool, unsloth_installed: bool) -> TrainBackend:
        """unsloth (CUDA + unsloth installed, LoRA or QLoRA), else peft LoRA or full fine-tuning;
        ``training.backend`` can rule Unsloth out, or insist on it."""
        method: Method = "full" if cfg.method == "full" else "lora"
        usable = cuda and unsloth_installed and method == "lora"
        if cfg.backend == "unsloth" and not usable:
            raise DeepDistillError("training.backend is unsloth, which needs a CUDA GPU, the gpu extra "
                                   "(unsloth) and a LoRA or QLoRA method")
        return cls(usable and cfg.backend != "transformers", method, "cuda" if cuda else "cpu",
                   "nf4" if cfg.method == "qlora" else None)
