#!/usr/bin/env bash
#SBATCH --job-name=dd-prepare
@@resources
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
@@header

# 1. Read the recipe's sources into the main store (dedup, decontamination), then split the training
#    queries into $SAMPLING_SHARDS shard files. Submitted by submit.sh (or run with bash on a CPU
#    node); re-running is harmless.
mkdir -p "$(dirname "$DB")" "$SHARDS_DIR" logs
deepdistill-tui run --recipe recipe.yaml --db "$DB" --stages ingest
deepdistill-tui shard --db "$DB" --shards "$SAMPLING_SHARDS" --out "$SHARDS_DIR"
echo "prepared @@recipe: $(find "$SHARDS_DIR" -name 'shard-*.db' | wc -l) shards"
