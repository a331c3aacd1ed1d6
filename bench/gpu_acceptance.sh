#!/usr/bin/env bash
# GPU acceptance: the `small` recipe, capped, end to end on one GPU, with its figures.
#
#   bash bench/gpu_acceptance.sh [--dry-run] [--out DIR] [--skip-install] [--wheels DIR]
#                                [--queries 64] [--passes 2] [--max-tokens 2048]
#
# On a fresh GPU machine with this repository: installs the GPU stack (the README's GPU set-up, or
# from a folder of wheels on a machine with no network), then runs sample, grade, select, Unsloth QLoRA
# training with GGUF export, and evaluation through llama.cpp, timing each stage and sampling the GPU's
# memory. It also measures sampling tokens/s batched vs a plain loop (bench/bench_sample.py on the
# 1.5B teacher), and Unsloth vs plain peft QLoRA training tokens/s on the same data. Figures go to
# DIR (default: $OUT where that is set, else ./gpu-acceptance) as gpu_acceptance.json and .md.
# --dry-run prints the plan and exits 0 anywhere. Budget: 25 minutes on a 24 GB card.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
INSTALL=1
WHEELS=""
QUERIES=64
PASSES=2
MAX_TOKENS=2048
OUT_DIR="${OUT:-$PWD/gpu-acceptance}"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-install) INSTALL=0 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
    --queries) QUERIES="${2:?}"; shift ;;
    --passes) PASSES="${2:?}"; shift ;;
    --max-tokens) MAX_TOKENS="${2:?}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_acceptance.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

WORK="$OUT_DIR/work"
RECIPE="$WORK/recipe.yaml"
DB="$WORK/acceptance.db"
TORCH_BOUND="torch>=2.10,<2.15"   # what unsloth==2026.10.9 accepts
LLAMA="llama-cpp-python[server]==0.3.36"

plan() {
  cat <<EOF
GPU acceptance plan (recipe small, capped: $QUERIES queries, $PASSES passes, $MAX_TOKENS max tokens, 1 epoch)
  output:   $OUT_DIR/gpu_acceptance.json and gpu_acceptance.md (scratch in $WORK)
  1. install: $(if [[ $INSTALL == 0 ]]; then echo "skipped (--skip-install)";
                elif [[ -n $WHEELS ]]; then echo "from the wheels in $WHEELS (no network)";
                else echo "pip install '$TORCH_BOUND'; CMAKE_ARGS=-DGGML_CUDA=on pip install --force-reinstall --no-cache-dir '$LLAMA'; pip install -e '.[gpu,models]'"; fi)
  2. check:   a CUDA GPU for torch, GPU offload in llama.cpp
  3. recipe:  python bench/gpu_acceptance.py recipe --out $RECIPE
  4. stages:  deepdistill-tui ingest | sample | grade | select | train (Unsloth QLoRA + GGUF) | eval base, latest
              each timed, with peak GPU memory from nvidia-smi
  5. sampling: python bench/bench_sample.py --recipe $RECIPE --teacher r1-distill-1.5b (loop vs batched)
  6. training: 20 steps with training.backend unsloth, then transformers (peft), same selection
  7. report:  python bench/gpu_acceptance.py report --work $WORK --out $OUT_DIR
EOF
}

if [[ $DRY_RUN == 1 ]]; then
  plan
  exit 0
fi

install_stack() {
  if [[ -n $WHEELS ]]; then
    python3 -m pip install -q --no-index --find-links "$WHEELS" "$TORCH_BOUND" "$LLAMA"
    python3 -m pip install -q --no-index --find-links "$WHEELS" -e ".[gpu,models]"
  else
    python3 -m pip install -q "$TORCH_BOUND"
    CMAKE_ARGS="-DGGML_CUDA=on" python3 -m pip install -q --force-reinstall --no-cache-dir "$LLAMA"
    python3 -m pip install -q -e ".[gpu,models]"
  fi
}

# Run one stage: its wall time and the GPU's peak memory (nvidia-smi every 200 ms) go to stages.tsv.
stage() {
  local name="$1"
  shift
  local log="$WORK/memory-$name.txt" status=ok start end peak
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$log" 2> /dev/null &
  local sampler=$!
  start=$(date +%s.%N)
  "$@" || status=failed
  end=$(date +%s.%N)
  kill "$sampler" 2> /dev/null || true
  wait "$sampler" 2> /dev/null || true
  peak=$(sort -n "$log" | tail -n1)
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(echo "$end - $start" | bc)" "${peak:--}" >> "$WORK/stages.tsv"
  echo "stage $name: $status"
  [[ $status == ok ]]
}

plan
mkdir -p "$WORK"
: > "$WORK/stages.tsv"
if [[ $INSTALL == 1 ]]; then
  stage install install_stack
fi
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU for torch')"
python3 -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 'llama.cpp has no GPU offload: rebuild it with CUDA (README, GPU set-up)')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$WORK/gpu.txt"

python3 bench/gpu_acceptance.py recipe --out "$RECIPE" --queries "$QUERIES" --passes "$PASSES" \
  --max-tokens "$MAX_TOKENS"
DD=(deepdistill-tui --db "$DB")
stage ingest "${DD[@]}" ingest --recipe "$RECIPE"
stage sample "${DD[@]}" sample --recipe "$RECIPE"
stage grade "${DD[@]}" grade --recipe "$RECIPE"
stage select "${DD[@]}" select --recipe "$RECIPE" --name small-acceptance
stage train sh -c "${DD[*]} train --recipe '$RECIPE' --selection small-acceptance --json > '$WORK/train.json'"
stage eval-base "${DD[@]}" eval --recipe "$RECIPE" --model base
stage eval sh -c "${DD[*]} eval --recipe '$RECIPE' --model latest --json > '$WORK/eval.json'"
stage sample-bench python3 bench/bench_sample.py --recipe "$RECIPE" --teacher r1-distill-1.5b \
  --prompts 32 --max-tokens 512 --passes 4 --sequences 64 --json "$WORK/sample_bench.json"
for backend in unsloth transformers; do
  stage "train-$backend" sh -c "${DD[*]} train --recipe '$WORK/recipe-$backend.yaml' \
    --selection small-acceptance --fresh --json > '$WORK/train-$backend.json'" || true
done
python3 bench/gpu_acceptance.py report --work "$WORK" --out "$OUT_DIR"
