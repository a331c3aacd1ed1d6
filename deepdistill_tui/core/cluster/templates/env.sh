# Settings every job of this bundle reads. Sourced, not run.
# shellcheck shell=bash
export BUNDLE="${BUNDLE:-$PWD}"
export DB="${DB:-$BUNDLE/store/main.db}"            # the main store (one writer: the merge step)
export SHARDS_DIR="${SHARDS_DIR:-$BUNDLE/store/shards}"
export SAMPLING_SHARDS=@@sampling_shards
export GRADING_SHARDS=@@grading_shards
export PARTITION="${PARTITION:-@@partition}"
export GPUS_PER_NODE=@@gpus_per_node                   # @@per_node_note
export NODES=@@nodes
export INFERENCE_ENGINE="${INFERENCE_ENGINE:-@@inference_engine}"  # @@engines: serve/TEACHER.$INFERENCE_ENGINE.sbatch
export ENGINE="${ENGINE:-@@engine}"  # @@train_engines
export MASTER_PORT="${MASTER_PORT:-29500}"
# How long a sampling or grading task waits for a teacher's server to publish its address.
export ENDPOINT_WAIT_S="${ENDPOINT_WAIT_S:-@@endpoint_wait_s}"
# Threads per sampling/grading task; llama.cpp and the graders oversubscribe otherwise.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-@@threads}"
