"""Cluster bundles: the recipe at full scale on the engines people already run.

``write_bundle`` turns a recipe with a ``cluster`` section into a folder of plain files: vLLM (or
SGLang) serve jobs for the teachers, Slurm array jobs that run this project's own ``sample`` and
``grade`` commands over shards of the query set, the merge / select / export commands, and a torchrun
job (DeepSpeed ZeRO-3, or FSDP through accelerate) whose entrypoint is this project's trainer,
``python -m deepdistill_tui.core.train``. Nothing here schedules or parallelises anything itself.

This module decides the numbers: batch arithmetic, tensor parallel degrees, steps and GPU-hours, and
what changes when a pilot run is carried up to full scale. ``core.bundle`` renders them into the shell
templates of ``core/templates``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from deepdistill_tui.core.cluster.profiles import CLUSTER, Profile, cpu_test_recipe, profile
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import ClusterConfig, OpenAITeacher, Recipe

PORT_BASE = 8001
# Usable share of a GPU's memory (vLLM's --gpu-memory-utilization), and the share of that the weights
# may take: the rest is KV cache for long reasoning traces at high concurrency.
GPU_MEMORY_UTILIZATION = 0.9
WEIGHT_SHARE = 0.6
# SGLang's --mem-fraction-static counts weights and KV cache alone (vLLM's share also covers activations
# and the CUDA graphs), so it sits a little below for the same headroom.
SGLANG_MEMORY_FRACTION = round(GPU_MEMORY_UTILIZATION - 0.05, 2)
# The paper's Stage I / II data when no store tells us the real figures (docs/PAPER.md section 5).
PAPER_STAGE1 = (5_400_000, 19_200_000_000)
PAPER_STAGE2 = (250_000, int(250_000 * 19_200_000_000 / 5_400_000))


# ---------------------------------------------------------------- batch arithmetic


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    nodes: int
    gpus_per_node: int
    micro_batch: int
    grad_accum: int

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def batch_plan(global_batch: int, nodes: int, gpus_per_node: int, micro_batch: int) -> BatchPlan:
    """The accumulation that makes nodes x GPUs x micro-batch x accumulation = global batch."""
    per_step = nodes * gpus_per_node * micro_batch
    if global_batch % per_step:
        raise DeepDistillError(
            f"global batch {global_batch} is not a multiple of nodes x GPUs x micro-batch "
            f"= {nodes} x {gpus_per_node} x {micro_batch} = {per_step}; change cluster.nodes, "
            "cluster.gpus_per_node or training.micro_batch")
    return BatchPlan(global_batch, nodes, gpus_per_node, micro_batch, global_batch // per_step)


# ---------------------------------------------------------------- serving


@dataclass(frozen=True)
class ServePlan:
    teacher: str
    model: str
    port: int
    tensor_parallel: int
    pipeline_parallel: int
    max_model_len: int

    @property
    def nodes(self) -> int:
        return self.pipeline_parallel


def serve_plan(teacher: OpenAITeacher, index: int, cluster: ClusterConfig, on_gpus: bool = True) -> ServePlan:
    """Tensor parallel = the smallest power of two whose GPUs hold the weights with room for the KV
    cache; past one node, pipeline stages across nodes (how vLLM serves DeepSeek-R1 on 80 GB GPUs).
    Without GPUs (the CPU test profile) a stand-in is served by one process."""
    spec = cluster.teachers.get(teacher.name)
    model = (spec.model if spec else None) or teacher.served_model
    if not model:
        raise DeepDistillError(f"teacher {teacher.name}: set `served_model` (or cluster.teachers."
                               f"{teacher.name}.model) to the weights to serve")
    if not on_gpus:
        return ServePlan(teacher.name, model, PORT_BASE + index, 1, 1, teacher.n_ctx)
    params_b = spec.params_b if spec else _size_from_name(model)
    if params_b is None:
        raise DeepDistillError(f"cluster.teachers.{teacher.name}.params_b: the size of {model} is needed "
                               "to choose its tensor-parallel degree")
    weight_gb = params_b * (spec.weight_bytes if spec else 2)
    gpus = max(1, math.ceil(weight_gb / (cluster.gpu_memory_gb * GPU_MEMORY_UTILIZATION * WEIGHT_SHARE)))
    tp = 1 << (gpus - 1).bit_length()
    pp = 1
    if tp > cluster.gpus_per_node:
        tp, pp = cluster.gpus_per_node, math.ceil(gpus / cluster.gpus_per_node)
    if pp > cluster.nodes:
        raise DeepDistillError(f"teacher {teacher.name} needs {pp} nodes of {cluster.gpus_per_node} GPUs "
                               f"to serve; the cluster section has {cluster.nodes}")
    return ServePlan(teacher.name, model, PORT_BASE + index, tp, pp, teacher.n_ctx)


def _size_from_name(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)[bB]\b", name)
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------- training stages and the plan


@dataclass
class StagePlan:
    name: str
    learning_rate: float
    epochs: float
    packing: bool
    max_length: int
    batch: BatchPlan
    instances: int
    tokens: int
    tokens_from: str
    steps: int = 0
    gpu_hours: float | None = None


def stage_plans(recipe: Recipe, sizes: dict[str, tuple[int, int, str]]) -> list[StagePlan]:
    """Stage I (and Stage II when the recipe anneals), with steps and GPU-hours estimated."""
    cfg, cluster = recipe.training, _cluster(recipe)
    batch = batch_plan(cfg.global_batch or cfg.micro_batch * cfg.grad_accum * cluster.nodes
                       * cluster.gpus_per_node, cluster.nodes, cluster.gpus_per_node, cfg.micro_batch)
    stages = [StagePlan("stage1", cfg.learning_rate, cfg.epochs, cfg.packing, cfg.max_length, batch,
                        *sizes["stage1"])]
    if cfg.stage2 is not None and recipe.selection.stage2.enabled:
        s2 = cfg.stage2
        stages.append(StagePlan("stage2", s2.learning_rate, s2.epochs, s2.packing, cfg.max_length, batch,
                                *sizes["stage2"]))
    params_b = cluster.student_params_b or _size_from_name(cfg.student.name)
    for st in stages:
        seen = st.tokens * st.epochs
        st.steps = math.ceil(seen / (st.max_length * batch.global_batch) if st.packing
                             else st.instances * st.epochs / batch.global_batch)
        if params_b:
            st.gpu_hours = 6 * params_b * 1e9 * seen / (cluster.tflops_per_gpu * 1e12) / 3600
    return stages


def data_sizes(store: Any, recipe: Recipe) -> dict[str, tuple[int, int, str]]:
    """(instances, answer tokens, where the figures come from) per stage: the store's selections of the
    recipe's name when there are any, else the paper's published sizes."""
    out = {"stage1": (*PAPER_STAGE1, "the paper's Stage I data (docs/PAPER.md section 5)"),
           "stage2": (*PAPER_STAGE2, "the paper's Stage II size, at Stage I's mean length")}
    if store is None:
        return out
    for stage, name in (("stage1", recipe.name), ("stage2", f"{recipe.name}-stage2")):
        row = store.conn.execute("SELECT n_members, n_tokens FROM selections WHERE name = ?",
                                 (name,)).fetchone()
        if row and row[0]:
            out[stage] = (row[0], row[1], f"selection {name} in {store.path}")
    return out


def _cluster(recipe: Recipe) -> ClusterConfig:
    if recipe.cluster is None:
        raise DeepDistillError(f"recipe {recipe.name} has no `cluster` section: add one (nodes, "
                               "gpus_per_node, ...) to export a bundle")
    return recipe.cluster


# ---------------------------------------------------------------- a pilot carried up


@dataclass
class Change:
    key: str
    pilot: Any
    bundle: Any
    why: str


# What carries over from a pilot unchanged: the data rules and the schedule.
CARRIED = ("grading.thresholds", "grading.require_reasoning", "selection.cv_threshold",
           "selection.cv_ddof", "selection.easy_keep_probability", "selection.stage2.threshold",
           "selection.seed", "sampling.passes", "training.epochs", "training.warmup_ratio",
           "training.lr_scheduler", "training.packing")
REASONS = {
    "training.student": "the full-scale recipe's student",
    "training.method": "full fine-tuning across nodes, as in the paper; (Q)LoRA is a one-GPU economy",
    "training.learning_rate": "a LoRA adapter needs a learning rate about 10x full fine-tuning's; the "
                              "paper's full fine-tuning value is used (docs/PAPER.md section 6)",
    "training.max_length": "the pilot's length was set by one GPU's memory; the paper trains at 32k",
    "training.micro_batch": "per-GPU memory at full scale",
    "training.grad_accum": "recomputed so that nodes x GPUs x micro-batch x accumulation = global batch",
    "training.global_batch": "the paper's global batch",
    "training.max_steps": "a pilot's step cap does not apply to the full run",
    "training.save_steps": "checkpoint spacing of a multi-day run",
    "training.gguf": "GGUF export is for a student served by llama.cpp at home",
    "training.merge": "full fine-tuning leaves no adapter to merge",
}


def carry_from_pilot(target: Recipe, pilot: Recipe) -> tuple[Recipe, list[Change]]:
    """The target recipe with the pilot's data rules and schedule; every value that differs from the
    pilot's is listed with the reason (carried values are listed too, as what they replaced)."""
    data = target.model_dump(mode="json")
    pdata = pilot.model_dump(mode="json")
    changes = []
    for key in CARRIED:
        before = _get(data, key)
        value = _get(pdata, key)
        _set(data, key, value)
        if before != value:
            changes.append(Change(key, value, value, f"carried from the pilot (the {target.name} recipe "
                                                     f"had {before!r})"))
    carried = Recipe.model_validate(data)
    for key, why in REASONS.items():
        pv, bv = _get(pdata, key), _get(data, key)
        if pv != bv:
            if key == "training.student":
                pv, bv = pilot.training.student.name, carried.training.student.name
            changes.append(Change(key, pv, bv, why))
    return carried, changes


def _get(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def pilot_recipe(store: Any, run_id: str) -> Recipe:
    run = store.run(run_id)
    if run is None:
        raise DeepDistillError(f"pilot run {run_id}: no such run in {store.path}")
    if run["command"] != "train":
        raise DeepDistillError(f"pilot run {run_id}: a {run['command']} run; a pilot is a train run")
    return Recipe.model_validate(run["recipe"])


# ---------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    recipe: Recipe
    cluster: ClusterConfig
    batch: BatchPlan
    serve: list[ServePlan]
    stages: list[StagePlan]
    changes: list[Change] = field(default_factory=list)
    pilot_run: str | None = None
    files: list[str] = field(default_factory=list)
    profile: Profile = CLUSTER


def plan_bundle(recipe: Recipe, store: Any = None, from_run: str | None = None,
                profile_name: str = "cluster") -> Bundle:
    changes: list[Change] = []
    if from_run:
        if store is None:
            raise DeepDistillError(f"pilot run {from_run}: no store to read it from")
        recipe, changes = carry_from_pilot(recipe, pilot_recipe(store, from_run))
    prof = profile(profile_name)
    if not prof.gpus:
        recipe = cpu_test_recipe(recipe)
    cluster = _cluster(recipe)
    stages = stage_plans(recipe, data_sizes(store, recipe))
    serve = [serve_plan(t, i, cluster, prof.gpus) for i, t in enumerate(recipe.teachers)
             if isinstance(t, OpenAITeacher)]
    return Bundle(recipe, cluster, stages[0].batch, serve, stages, changes, from_run, profile=prof)


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
