# Settings every job of this bundle reads. Sourced, not run.
# shellcheck shell=bash
export BUNDLE="${BUNDLE:-$PWD}"
export DB="${DB:-$BUNDLE/store/main.db}"            # the main store (one writer: the merge step)
export SHARDS_DIR="${SHARDS_DIR:-$BUNDLE/store/shards}"
export SAMPLING_SHARDS=@@sampling_shards
export GRADING_SHARDS=@@grading_shards
export PARTITION="${PARTITION:-@@partition}"
export GPUS_PER_NODE=@@gpus_per_node
export NODES=@@nodes
export ENGINE="${ENGINE:-@@engine}"  # deepspeed | fsdp
export MASTER_PORT="${MASTER_PORT:-29500}"
# Threads per sampling/grading task; llama.cpp and the graders oversubscribe otherwise.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
