"""Writing a cluster bundle: the planner's numbers (``core.cluster``) rendered into plain files.

The shell text lives in ``core/cluster/templates/`` (shipped with the package), with ``@@name`` placeholders:
bash's own ``$`` syntax stays as it is, and a placeholder left unfilled is an error, never a silent
blank. Every script sources ``env.sh`` from the bundle folder (jobs are submitted from there, so
Slurm's ``SLURM_SUBMIT_DIR`` points at it), uses ``set -euo pipefail``, and passes shellcheck.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import string
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from deepdistill_tui.core.cluster.plan import (
    GPU_MEMORY_UTILIZATION,
    SGLANG_MEMORY_FRACTION,
    Bundle,
    ServePlan,
    StagePlan,
    plan_bundle,
    recipe_yaml,
)
from deepdistill_tui.core.cluster.profiles import CPU_TEST_CONTEXT, TEACHER_GGUF, write_stand_ins
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Recipe

TEMPLATES = Path(__file__).resolve().parent / "templates"
Files = dict[str, tuple[str, bool]]  # relative path -> (text, executable)


class _Script(string.Template):
    delimiter = "@@"


@cache
def _template(name: str) -> _Script:
    return _Script((TEMPLATES / name).read_text())


def render(name: str, **values: Any) -> str:
    """A template filled in; every placeholder must be given a value."""
    try:
        return _template(name).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise AssertionError(f"template {name}: no value for @@{exc.args[0]}") from None


def _header(top: bool = False) -> str:
    """The lines every script opens with; a job runs from the folder it was submitted from (the
    bundle's), a top-level script from its own folder."""
    if top:
        return render("header.sh", cd='cd "$(dirname "$0")"', up="").rstrip("\n")
    return render("header.sh", cd='cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"', up="/..").rstrip("\n")


def bundle_files(b: Bundle) -> Files:
    p = b.profile
    values = {"header": _header()}
    files: Files = {
        "README.md": (readme(b), False),
        "recipe.yaml": (recipe_yaml(b.recipe), False),
        "env.sh": (env_sh(b), False),
        "submit.sh": (render("submit.sh", header=_header(top=True), teachers=_teacher_words(b),
                             stages=" ".join(st.name for st in b.stages)), True),
        "recover.sh": (render("recover.sh", header=_header(top=True)), True),
        "jobs/01_prepare.sh": (render("prepare.sh", **values, resources=p.resources("prepare"),
                                      recipe=b.recipe.name), True),
        "jobs/02_sample.sbatch": (render("sample.sbatch", **values, resources=p.resources("sample"),
                                         endpoints=_endpoints(b, [sp.teacher for sp in b.serve]),
                                         last_shard=b.cluster.sampling_shards - 1), True),
        "jobs/03_grade.sbatch": (render("grade.sbatch", **values, resources=p.resources("grade"),
                                        endpoints=_endpoints(b, _judges(b)),
                                        last_shard=b.cluster.grading_shards - 1), True),
        "jobs/04_select_export.sh": (select_export_sh(b), True),
        "train/train.sbatch": (render("train.sbatch", **values,
                                      resources=p.resources("train", b.batch.nodes, b.batch.gpus_per_node)),
                               True),
        "train/ds_zero3.json": (json.dumps(deepspeed_config(b), indent=2) + "\n", False),
        "train/accelerate_fsdp.yaml": (yaml.safe_dump(fsdp_config(b), sort_keys=False), False),
    }
    for st in b.stages:
        files[f"train/{st.name}/config.json"] = (json.dumps(train_config(b, st), indent=2) + "\n", False)
    writers = {"vllm": vllm_sbatch, "sglang": sglang_sbatch, "llamacpp": llamacpp_sbatch}
    for sp in b.serve:
        for engine in p.engines:
            files[f"serve/{sp.teacher}.{engine}.sbatch"] = (writers[engine](b, sp), True)
    return files


def env_sh(b: Bundle) -> str:
    c, p = b.cluster, b.profile
    engine = "fsdp" if c.distributed == "fsdp" else "deepspeed"
    return render("env.sh", sampling_shards=c.sampling_shards, grading_shards=c.grading_shards,
                  partition=c.partition or "", gpus_per_node=c.gpus_per_node, nodes=c.nodes,
                  per_node_note="GPUs a node" if p.gpus else "training processes a node (CPU test)",
                  inference_engine=c.inference_engine if p.gpus else p.engines[0],
                  engines=" | ".join(p.engines), engine=engine if p.gpus else "ddp",
                  train_engines="deepspeed | fsdp" if p.gpus else "ddp (CPU test: the others need GPUs)",
                  endpoint_wait_s=p.endpoint_wait_s, threads=p.threads)


def _teacher_words(b: Bundle) -> str:
    return " ".join(shlex.quote(sp.teacher) for sp in b.serve)


# ---------------------------------------------------------------- teachers


def _serve_values(b: Bundle, sp: ServePlan) -> dict[str, Any]:
    gpus = min(sp.tensor_parallel, b.cluster.gpus_per_node)
    return {"header": _header(), "teacher": sp.teacher, "model": sp.model, "port": sp.port,
            "resources": b.profile.resources("serve", sp.nodes, gpus), "max_model_len": sp.max_model_len,
            "publish_endpoint": render("publish_endpoint.sh", port=sp.port, teacher=sp.teacher).rstrip("\n")}


def vllm_sbatch(b: Bundle, sp: ServePlan) -> str:
    multi = sp.pipeline_parallel > 1
    return render("vllm.sbatch", **_serve_values(b, sp), tensor_parallel=sp.tensor_parallel,
                  pipeline_parallel=sp.pipeline_parallel,
                  pipeline_flag=f" \\\n  --pipeline-parallel-size {sp.pipeline_parallel}" if multi else "",
                  ray_cluster=_template("ray_cluster.sh").template.rstrip("\n") if multi else "",
                  memory_fraction=GPU_MEMORY_UTILIZATION)


def sglang_sbatch(b: Bundle, sp: ServePlan) -> str:
    multi = ""
    if sp.pipeline_parallel > 1:
        multi = (' \\\n  --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" '
                 '--dist-init-addr "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):5000"')
    # SGLang shards across nodes with tensor parallel alone.
    return render("sglang.sbatch", **_serve_values(b, sp),
                  tensor_parallel=sp.tensor_parallel * sp.pipeline_parallel, multi_node=multi,
                  memory_fraction=SGLANG_MEMORY_FRACTION)


def llamacpp_sbatch(b: Bundle, sp: ServePlan) -> str:
    values = _serve_values(b, sp)
    values["max_model_len"] = min(sp.max_model_len, CPU_TEST_CONTEXT)
    return render("llamacpp.sbatch", **values, gguf=TEACHER_GGUF)


# ---------------------------------------------------------------- data


def _endpoints(b: Bundle, teachers: list[str]) -> str:
    """The wait for the named teachers' servers (none: an empty list of endpoints)."""
    if not teachers:
        return "ENDPOINTS=()"
    return render("endpoints.sh", teachers=" ".join(shlex.quote(t) for t in teachers)).rstrip("\n")


def _judges(b: Bundle) -> list[str]:
    """Served teachers the grading step asks: the judge, when the recipe has one."""
    judge = b.recipe.grading.judge_teacher
    return [sp.teacher for sp in b.serve if sp.teacher == judge]


def select_export_sh(b: Bundle) -> str:
    name = b.recipe.name
    exports = [f'deepdistill-tui export --recipe recipe.yaml --db "$DB" --selection {name} '
               '--format jsonl --out data/stage1.jsonl']
    if any(st.name == "stage2" for st in b.stages):
        exports.append(f'deepdistill-tui export --recipe recipe.yaml --db "$DB" --selection {name}-stage2 '
                       '--format jsonl --out data/stage2.jsonl')
    return render("select_export.sh", header=_header(), resources=b.profile.resources("select"), recipe=name,
                  exports="\n".join(exports))


# ---------------------------------------------------------------- training


def deepspeed_config(b: Bundle) -> dict[str, Any]:
    """ZeRO-3 with explicit batch sizes: DeepSpeed itself checks train_batch_size = micro x accumulation
    x world, and the Trainer checks they match its own arguments."""
    return {
        "train_batch_size": b.batch.global_batch,
        "train_micro_batch_size_per_gpu": b.batch.micro_batch,
        "gradient_accumulation_steps": b.batch.grad_accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 500_000_000,
            "stage3_prefetch_bucket_size": 500_000_000,
            "stage3_param_persistence_threshold": 1_000_000,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "steps_per_print": 10,
        "wall_clock_breakdown": False,
    }


def fsdp_config(b: Bundle) -> dict[str, Any]:
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "mixed_precision": "bf16",
        "num_machines": b.batch.nodes,
        "num_processes": b.batch.world,
        "rdzv_backend": "c10d",
        "same_network": True,
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_activation_checkpointing": True,
        },
    }


def train_config(b: Bundle, st: StagePlan) -> dict[str, Any]:
    """RUN_DIR/config.json (``RunConfig``) for the project's trainer: the recipe with this stage's values."""
    from deepdistill_tui.core.train.config import DistributedSettings, RunConfig

    data = b.recipe.model_dump(mode="json")
    data["training"].update({"learning_rate": st.learning_rate, "epochs": st.epochs,
                             "packing": st.packing, "micro_batch": st.batch.micro_batch,
                             "grad_accum": st.batch.grad_accum, "stage2": None})
    if st.name == "stage2":
        # Annealing continues from Stage I's weights (docs/PAPER.md section 6).
        data["training"]["student"] = {"name": f"{b.recipe.training.student.name}-stage1",
                                       "hf_model": "train/stage1/model"}
    config = RunConfig(recipe=Recipe.model_validate(data), data_file=f"../../data/{st.name}.jsonl",
                       stage=st.name, distributed=DistributedSettings(deepspeed="../ds_zero3.json",
                                                                      gradient_checkpointing=True))
    return config.model_dump(mode="json")


# ---------------------------------------------------------------- the plan


def readme(b: Bundle) -> str:
    r, c, gb = b.recipe, b.cluster, b.batch
    serve_rows = "\n".join(
        f"| {sp.teacher} | `{sp.model}` | {sp.tensor_parallel} | {sp.pipeline_parallel} | "
        f"{sp.tensor_parallel * sp.pipeline_parallel} | {sp.port} |" for sp in b.serve) or "| (none) |||||"
    changes = ""
    if b.pilot_run:
        rows = "\n".join(f"| `{ch.key}` | {ch.pilot!r} | {ch.bundle!r} | {ch.why} |" for ch in b.changes)
        changes = (f"\n## Carried from pilot run {b.pilot_run}\n\nThe pilot's data rules and schedule "
                   "carry over; every value that differs from the pilot's is listed with the reason.\n\n"
                   f"| key | pilot | this bundle | why |\n|---|---|---|---|\n{rows}\n")
    engine = ("DeepSpeed ZeRO-3 (`ENGINE=fsdp` switches to FSDP)" if c.distributed == "deepspeed_zero3"
              else "FSDP (`ENGINE=deepspeed` switches to DeepSpeed ZeRO-3)")
    served_by = c.inference_engine if b.profile.gpus else b.profile.engines[0]
    serve_cmds = (", ".join(f"`serve/{sp.teacher}.{served_by}.sbatch`" for sp in b.serve) + "." if b.serve
                  else "none: sampling runs llama.cpp inside the array tasks.")
    return render(
        "README.md", recipe=r.name, description=" ".join(r.description.split()), nodes=c.nodes,
        gpus_per_node=c.gpus_per_node, gpu_memory_gb=c.gpu_memory_gb, global_batch=gb.global_batch,
        micro_batch=gb.micro_batch, grad_accum=gb.grad_accum, inference_engine=c.inference_engine,
        passes=r.sampling.passes, serve_rows=serve_rows, engine_text=engine,
        warmup=f"{r.training.warmup_ratio:.0%}", stage_rows="\n".join(_stage_row(st) for st in b.stages),
        sizes_from="; ".join(sorted({st.tokens_from for st in b.stages})), tflops=f"{c.tflops_per_gpu:g}",
        changes=changes, serve_commands=serve_cmds, stages=", ".join(st.name for st in b.stages),
        profile_note=CPU_TEST_NOTE if not b.profile.gpus else "",
        manual_serve="\n".join(f"sbatch serve/{sp.teacher}.{served_by}.sbatch" for sp in b.serve)
        or "# (no served teachers: sampling runs llama.cpp inside the array tasks)",
        train_commands="\n".join(f"sbatch train/train.sbatch train/{st.name}" for st in b.stages))


CPU_TEST_NOTE = """
## This is the CPU test profile

Written with `--profile cpu-test`: the plan, the scripts, the shard counts and the chain are the
cluster's, but the jobs ask for CPUs, the teachers are served by llama.cpp's OpenAI-compatible server
(`serve/*.llamacpp.sbatch`) on the stand-in GGUF in `models/`, the student is a small stand-in of its
architecture (`models/student-*`, random weights), decontamination uses n-grams only, and training is
DDP over gloo with GPUS_PER_NODE processes a node (`ENGINE=ddp`). It exists to submit the bundle to
a real Slurm without GPUs; its numbers say nothing about a real run's.
"""


def _stage_row(st: StagePlan) -> str:
    hours = f"{st.gpu_hours:,.0f}" if st.gpu_hours is not None else "unknown (set cluster.student_params_b)"
    return (f"| {st.name} | {st.learning_rate:g} | {st.epochs:g} | {'yes' if st.packing else 'no'} | "
            f"{st.max_length:,} | {st.instances:,} | {st.tokens:,} | {st.steps:,} | {hours} |")


# ---------------------------------------------------------------- writing


def write_bundle(bundle: Bundle, out: Path) -> list[str]:
    """Write every file into a scratch folder beside ``out``, then rename it into place."""
    if out.exists() and any(out.iterdir()):
        raise DeepDistillError(f"bundle folder {out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = bundle_files(bundle)
        for rel, (text, executable) in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if executable:
                path.chmod(0o755)
        if not bundle.profile.gpus:
            write_stand_ins(bundle.recipe, tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bundle.files = sorted(files)
    return bundle.files


def write_cluster_bundle(recipe: Recipe, out: Path, store: Any = None, from_run: str | None = None,
                         profile: str = "cluster") -> dict[str, Any]:
    """Plan and write the bundle (both faces call this); what was written, for the faces to show."""
    bundle = plan_bundle(recipe, store, from_run, profile)
    files = write_bundle(bundle, out)
    return {"bundle": str(out), "files": len(files), "plan": bundle,
            "stages": [{"name": st.name, "steps": st.steps} for st in bundle.stages]}
