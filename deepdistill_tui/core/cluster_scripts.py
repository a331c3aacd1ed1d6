"""The text of a cluster bundle's files; the numbers in them come from ``core.cluster``.

Every script sources ``env.sh`` from the bundle folder (jobs are submitted from there, so Slurm's
``SLURM_SUBMIT_DIR`` points at it), uses ``set -euo pipefail``, and passes shellcheck.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from deepdistill_tui.core.cluster import Bundle, ServePlan, StagePlan, recipe_yaml

Files = dict[str, tuple[str, bool]]  # relative path -> (text, executable)

HEADER = """#!/usr/bin/env bash
# Written by `deepdistill-tui cluster-export`; edit env.sh rather than this file.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck source=SCRIPTDIR/../env.sh
source ./env.sh
"""


def bundle_files(b: Bundle) -> Files:
    files: Files = {
        "README.md": (readme(b), False),
        "recipe.yaml": (recipe_yaml(b.recipe), False),
        "env.sh": (env_sh(b), False),
        "jobs/01_prepare.sh": (prepare_sh(b), True),
        "jobs/02_sample.sbatch": (sample_sbatch(b), True),
        "jobs/03_grade.sbatch": (grade_sbatch(b), True),
        "jobs/04_select_export.sh": (select_export_sh(b), True),
        "train/train.sbatch": (train_sbatch(b), True),
        "train/ds_zero3.json": (json.dumps(deepspeed_config(b), indent=2) + "\n", False),
        "train/accelerate_fsdp.yaml": (yaml.safe_dump(fsdp_config(b), sort_keys=False), False),
    }
    for st in b.stages:
        files[f"train/{st.name}/config.json"] = (json.dumps(train_config(b, st), indent=2) + "\n", False)
    for sp in b.serve:
        files[f"serve/{sp.teacher}.vllm.sbatch"] = (vllm_sbatch(b, sp), True)
        files[f"serve/{sp.teacher}.sglang.sbatch"] = (sglang_sbatch(b, sp), True)
    return files


# ---------------------------------------------------------------- shared settings


def env_sh(b: Bundle) -> str:
    c = b.recipe.cluster
    assert c is not None
    partition = c.partition or ""
    return f"""# Settings every job of this bundle reads. Sourced, not run.
# shellcheck shell=bash
export BUNDLE="${{BUNDLE:-$PWD}}"
export DB="${{DB:-$BUNDLE/store/main.db}}"            # the main store (one writer: the merge step)
export SHARDS_DIR="${{SHARDS_DIR:-$BUNDLE/store/shards}}"
export SAMPLING_SHARDS={c.sampling_shards}
export GRADING_SHARDS={c.grading_shards}
export PARTITION="${{PARTITION:-{partition}}}"
export GPUS_PER_NODE={c.gpus_per_node}
export NODES={c.nodes}
export ENGINE="${{ENGINE:-{"fsdp" if c.distributed == "fsdp" else "deepspeed"}}}"  # deepspeed | fsdp
export MASTER_PORT="${{MASTER_PORT:-29500}}"
# Threads per sampling/grading task; llama.cpp and the graders oversubscribe otherwise.
export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-8}}"
"""


# ---------------------------------------------------------------- teachers


def vllm_sbatch(b: Bundle, sp: ServePlan) -> str:
    c = b.recipe.cluster
    assert c is not None
    pp = f" \\\n  --pipeline-parallel-size {sp.pipeline_parallel}" if sp.pipeline_parallel > 1 else ""
    ray = _ray_cluster() if sp.pipeline_parallel > 1 else ""
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=dd-serve-{sp.teacher}
#SBATCH --nodes={sp.nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={min(sp.tensor_parallel, c.gpus_per_node)}
#SBATCH --time=7-00:00:00
#SBATCH --output=logs/%x-%j.out
{HEADER.split(chr(10), 1)[1]}
# vLLM's OpenAI-compatible server for teacher {sp.teacher}: tensor parallel {sp.tensor_parallel} x
# pipeline parallel {sp.pipeline_parallel}. When it answers, its address goes to endpoints/ where the
# sampling jobs read it.
mkdir -p endpoints logs
HOST=$(hostname)
{ray}vllm serve {sp.model} \\
  --served-model-name {sp.model} \\
  --host 0.0.0.0 --port {sp.port} \\
  --tensor-parallel-size {sp.tensor_parallel}{pp} \\
  --max-model-len {sp.max_model_len} \\
  --gpu-memory-utilization 0.9 \\
  --enable-prefix-caching &
SERVER=$!
{_publish_endpoint(sp)}
wait "$SERVER"
"""


def sglang_sbatch(b: Bundle, sp: ServePlan) -> str:
    c = b.recipe.cluster
    assert c is not None
    multi = ""
    if sp.pipeline_parallel > 1:
        multi = (' \\\n  --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" '
                 '--dist-init-addr "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):5000"')
    tp = sp.tensor_parallel * sp.pipeline_parallel  # SGLang shards across nodes with tensor parallel
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=dd-serve-{sp.teacher}-sglang
#SBATCH --nodes={sp.nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={min(sp.tensor_parallel, c.gpus_per_node)}
#SBATCH --time=7-00:00:00
#SBATCH --output=logs/%x-%j.out
{HEADER.split(chr(10), 1)[1]}
# The SGLang alternative for teacher {sp.teacher}: same port and OpenAI-compatible interface.
mkdir -p endpoints logs
HOST=$(hostname)
srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 python -m sglang.launch_server \\
  --model-path {sp.model} --served-model-name {sp.model} \\
  --host 0.0.0.0 --port {sp.port} --tp {tp}{multi} \\
  --context-length {sp.max_model_len} --mem-fraction-static 0.85 &
SERVER=$!
{_publish_endpoint(sp)}
wait "$SERVER"
"""


def _ray_cluster() -> str:
    return """# Pipeline stages span nodes: vLLM runs them on a Ray cluster over this job's nodes.
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun --nodes=1 --ntasks=1 -w "$HEAD" ray start --head --port=6379 --block &
sleep 20
srun --nodes=$((SLURM_NNODES - 1)) --ntasks=$((SLURM_NNODES - 1)) -x "$HEAD" \\
  ray start --address="$HEAD:6379" --block &
sleep 20
"""


def _publish_endpoint(sp: ServePlan) -> str:
    return f"""until curl -sf "http://$HOST:{sp.port}/v1/models" > /dev/null; do
  kill -0 "$SERVER" 2> /dev/null || exit 1
  sleep 10
done
echo "http://$HOST:{sp.port}/v1" > "endpoints/{sp.teacher}.url"
"""


# ---------------------------------------------------------------- data


def prepare_sh(b: Bundle) -> str:
    return f"""{HEADER}
# 1. Read the recipe's sources into the main store (dedup, decontamination), then split the training
#    queries into $SAMPLING_SHARDS shard files. Run once, on a CPU node; re-running is harmless.
mkdir -p "$(dirname "$DB")" "$SHARDS_DIR" logs
deepdistill-tui run --recipe recipe.yaml --db "$DB" --stages ingest
deepdistill-tui shard --db "$DB" --shards "$SAMPLING_SHARDS" --out "$SHARDS_DIR"
deepdistill-tui stats --recipe recipe.yaml --db "$DB" > logs/stats-before-sampling.txt || true
echo "prepared {b.recipe.name}: $(find "$SHARDS_DIR" -name 'shard-*.db' | wc -l) shards"
"""


def _endpoint_args(b: Bundle) -> str:
    lines = ["ENDPOINTS=()"]
    for sp in b.serve:
        lines.append(f'if [[ -f endpoints/{sp.teacher}.url ]]; then '
                     f'ENDPOINTS+=(--endpoint "{sp.teacher}=$(cat endpoints/{sp.teacher}.url)"); fi')
    return "\n".join(lines)


def sample_sbatch(b: Bundle) -> str:
    c = b.recipe.cluster
    assert c is not None
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=dd-sample
#SBATCH --array=0-{c.sampling_shards - 1}%32
#SBATCH --cpus-per-task=8
#SBATCH --time=2-00:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
{HEADER.split(chr(10), 1)[1]}
# 2. One array task per shard: this project's `sample` command (openai backend) against the teacher
#    servers in endpoints/. A task only generates its shard's missing passes, so a failed or
#    requeued task resumes where it stopped; resubmitting the whole array is safe.
SHARD="$SHARDS_DIR/shard-$(printf %04d "$SLURM_ARRAY_TASK_ID").db"
{_endpoint_args(b)}
deepdistill-tui sample --recipe recipe.yaml --db "$SHARD" "${{ENDPOINTS[@]}}"
"""


def grade_sbatch(b: Bundle) -> str:
    c = b.recipe.cluster
    assert c is not None
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=dd-grade
#SBATCH --array=0-{c.grading_shards - 1}
#SBATCH --cpus-per-task=16
#SBATCH --time=1-00:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
{HEADER.split(chr(10), 1)[1]}
# 3. Grading: task i grades every sampling shard j with j % $GRADING_SHARDS == i, with the code
#    sandbox (bubblewrap must be installed on the nodes). Ungraded samples only: resumable.
{_endpoint_args(b)}
for ((j = SLURM_ARRAY_TASK_ID; j < SAMPLING_SHARDS; j += GRADING_SHARDS)); do
  deepdistill-tui grade --recipe recipe.yaml --db "$SHARDS_DIR/shard-$(printf %04d "$j").db" \\
    --workers "$SLURM_CPUS_PER_TASK" "${{ENDPOINTS[@]}}"
done
"""


def select_export_sh(b: Bundle) -> str:
    name = b.recipe.name
    exports = [f'deepdistill-tui export --recipe recipe.yaml --db "$DB" --selection {name} '
               '--format jsonl --out data/stage1.jsonl']
    if any(st.name == "stage2" for st in b.stages):
        exports.append(f'deepdistill-tui export --recipe recipe.yaml --db "$DB" --selection {name}-stage2 '
                       '--format jsonl --out data/stage2.jsonl')
    return f"""{HEADER}
# 4. Fold the graded shards into the main store, print the statistics, select, and export the
#    training files the training job reads.
mkdir -p data logs
deepdistill-tui merge --db "$DB" "$SHARDS_DIR"/shard-*.db
deepdistill-tui stats --recipe recipe.yaml --db "$DB" | tee logs/stats.txt
deepdistill-tui select --recipe recipe.yaml --db "$DB" --name {name}
{chr(10).join(exports)}
"""


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
    """RUN_DIR/config.json for the project's trainer: the recipe with this stage's values."""
    data = b.recipe.model_dump(mode="json")
    data["training"].update({"learning_rate": st.learning_rate, "epochs": st.epochs,
                             "packing": st.packing, "micro_batch": st.batch.micro_batch,
                             "grad_accum": st.batch.grad_accum, "stage2": None})
    if st.name == "stage2":
        # Annealing continues from Stage I's weights (PAPER.md section 6).
        data["training"]["student"] = {"name": f"{b.recipe.training.student.name}-stage1",
                                       "hf_model": "train/stage1/model"}
    return {"recipe": data, "data_file": f"../../data/{st.name}.jsonl", "stage": st.name,
            "distributed": {"deepspeed": "../ds_zero3.json", "gradient_checkpointing": True}}


def train_sbatch(b: Bundle) -> str:
    return f"""#!/usr/bin/env bash
#SBATCH --job-name=dd-train
#SBATCH --nodes={b.batch.nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={b.batch.gpus_per_node}
#SBATCH --exclusive
#SBATCH --time=7-00:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --output=logs/%x-%j.out
{HEADER.split(chr(10), 1)[1]}
# 5. SFT with this project's trainer under torchrun on every node:
#      sbatch train/train.sbatch train/stage1        (then train/stage2 when the recipe anneals)
#    ENGINE=deepspeed uses train/ds_zero3.json; ENGINE=fsdp launches through accelerate with
#    train/accelerate_fsdp.yaml. A requeued or resubmitted job resumes from the stage's last
#    complete checkpoint; rank 0 alone logs and writes the results.
STAGE_DIR="${{1:?usage: sbatch train/train.sbatch train/stage1}}"
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
trap 'scontrol requeue "$SLURM_JOB_ID"' USR1
if [[ "$ENGINE" == fsdp ]]; then
  srun accelerate launch --config_file train/accelerate_fsdp.yaml \\
    --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \\
    --machine_rank "$SLURM_NODEID" --main_process_ip "$HEAD" --main_process_port "$MASTER_PORT" \\
    -m deepdistill_tui.core.train "$STAGE_DIR" --engine fsdp &
else
  srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \\
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$HEAD:$MASTER_PORT" \\
    -m deepdistill_tui.core.train "$STAGE_DIR" &
fi
wait $!
"""


# ---------------------------------------------------------------- the plan


def readme(b: Bundle) -> str:
    r, c = b.recipe, b.recipe.cluster
    assert c is not None
    serve_rows = "\n".join(
        f"| {sp.teacher} | `{sp.model}` | {sp.tensor_parallel} | {sp.pipeline_parallel} | "
        f"{sp.tensor_parallel * sp.pipeline_parallel} | {sp.port} |" for sp in b.serve) or "| (none) |||||"
    stage_rows = "\n".join(_stage_row(st) for st in b.stages)
    changes = ""
    if b.pilot_run:
        rows = "\n".join(f"| `{ch.key}` | {ch.pilot!r} | {ch.bundle!r} | {ch.why} |" for ch in b.changes)
        changes = (f"\n## Carried from pilot run {b.pilot_run}\n\nThe pilot's data rules and schedule "
                   "carry over; every value that differs from the pilot's is listed with the reason.\n\n"
                   f"| key | pilot | this bundle | why |\n|---|---|---|---|\n{rows}\n")
    gb = b.batch
    train_cmds = "\n".join(f"sbatch train/train.sbatch train/{st.name}" for st in b.stages)
    serve_cmds = "\n".join(f"sbatch serve/{sp.teacher}.{c.inference_engine}.sbatch" for sp in b.serve)
    return f"""# DeepDistill cluster bundle: {r.name}

{" ".join(r.description.split())}

Written by `deepdistill-tui cluster-export`. Every job runs this project's own commands
(`deepdistill-tui sample | grade | merge | select | export`, and `python -m deepdistill_tui.core.train`
for training), so install the same version of `deepdistill-tui` on the nodes, plus vLLM (or SGLang),
DeepSpeed and bubblewrap. Submit everything from this folder.

## Plan

- **Cluster**: {c.nodes} nodes x {c.gpus_per_node} GPUs ({c.gpu_memory_gb} GB), Slurm.
- **Global batch**: {gb.global_batch} = {gb.nodes} nodes x {gb.gpus_per_node} GPUs x micro-batch
  {gb.micro_batch} x accumulation {gb.grad_accum}.
- **Teachers** ({c.inference_engine}; SGLang scripts beside them), {r.sampling.passes} passes per query:

| teacher | weights | tensor parallel | pipeline parallel | GPUs | port |
|---|---|---|---|---|---|
{serve_rows}

- **Training**: {"DeepSpeed ZeRO-3 (`ENGINE=fsdp` switches to FSDP)" if c.distributed == "deepspeed_zero3"
                  else "FSDP (`ENGINE=deepspeed` switches to DeepSpeed ZeRO-3)"}, cosine schedule with
  {r.training.warmup_ratio:.0%} warmup:

| stage | learning rate | epochs | packing | max length | instances | answer tokens | steps | GPU-hours |
|---|---|---|---|---|---|---|---|---|
{stage_rows}

Sizes come from {"; ".join(sorted({st.tokens_from for st in b.stages}))}. A packed stage takes
tokens x epochs / (max length x global batch) steps; an unpacked one instances x epochs / global batch.
GPU-hours assume 6 x parameters x tokens FLOPs at a sustained {c.tflops_per_gpu:g} TFLOP/s per GPU
(`cluster.tflops_per_gpu`): a planning figure, not a measurement.
{changes}
## Commands, in order

```bash
bash jobs/01_prepare.sh                      # ingest + shard the queries
{serve_cmds or "# (no served teachers: sampling runs llama.cpp inside the array tasks)"}
sbatch jobs/02_sample.sbatch                 # once endpoints/*.url exist
sbatch --dependency=afterok:<sample job id> jobs/03_grade.sbatch
bash jobs/04_select_export.sh                # merge, stats, select, export data/*.jsonl
{train_cmds}
```

Every step is resumable: sampling and grading only do what their shard is missing, merging twice adds
nothing, and training restarts from its last complete checkpoint (the job requeues itself before its
time limit). Check the pipeline on one node first with `--smoke`, which only shrinks sizes:

```bash
torchrun --nproc_per_node 2 -m deepdistill_tui.core.train train/stage1 --smoke
```
"""


def _stage_row(st: StagePlan) -> str:
    hours = f"{st.gpu_hours:,.0f}" if st.gpu_hours is not None else "unknown (set cluster.student_params_b)"
    return (f"| {st.name} | {st.learning_rate:g} | {st.epochs:g} | {'yes' if st.packing else 'no'} | "
            f"{st.max_length:,} | {st.instances:,} | {st.tokens:,} | {st.steps:,} | {hours} |")
