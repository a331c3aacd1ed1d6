#!/usr/bin/env bash
# The one-GPU check, sized for the lent GPU machine (no network, 10 minutes a command, 64 MiB carried).
#
#   bash bench/gpu_check.sh --prepare [--dir DIR]            # here: wheels, trimmed, and a tokenizer
#   bash bench/gpu_check.sh --run [--dir DIR] [--out OUT]    # there: install from DIR, train, export
#   bash bench/gpu_check.sh --run --dry-run [--dir DIR]      # anywhere: check DIR, print the plan
#
# DIR defaults to .gpu-check in the repository (ignored by git: name it in the device tool's carry).
# OUT defaults to $OUT where that is set. The exact call on the GPU machine is in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=""
DRY_RUN=0
DIR="$PWD/.gpu-check"
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
STEPS=20
LIMIT_MIB=60

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --run) MODE=run ;;
    --dry-run) DRY_RUN=1 ;;
    --dir) DIR="${2:?--dir needs a folder}"; shift ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
    --steps) STEPS="${2:?--steps needs a number}"; shift ;;
    --limit-mib) LIMIT_MIB="${2:?--limit-mib needs a number}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

case "$MODE" in
  prepare)
    exec python3 bench/gpu_check.py prepare --dir "$DIR" --limit-mib "$LIMIT_MIB"
    ;;
  run)
    if [[ $DRY_RUN == 1 ]]; then
      exec python3 bench/gpu_check.py run --dir "$DIR" --out "$OUT_DIR" --steps "$STEPS" --dry-run
    fi
    if [[ ! -d "$DIR/wheels" ]]; then
      echo "gpu_check.sh: $DIR/wheels does not exist; make it with bench/gpu_check.sh --prepare" >&2
      exit 2
    fi
    SITE="$(mktemp -d)/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$DIR"/wheels/*.whl
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    exec python3 bench/gpu_check.py run --dir "$DIR" --out "$OUT_DIR" --steps "$STEPS"
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
