#!/usr/bin/env bash
@@header

# 1. Read the recipe's sources into the main store (dedup, decontamination), then split the training
#    queries into $SAMPLING_SHARDS shard files. Run once, on a CPU node; re-running is harmless.
mkdir -p "$(dirname "$DB")" "$SHARDS_DIR" logs
deepdistill-tui run --recipe recipe.yaml --db "$DB" --stages ingest
deepdistill-tui shard --db "$DB" --shards "$SAMPLING_SHARDS" --out "$SHARDS_DIR"
deepdistill-tui stats --recipe recipe.yaml --db "$DB" > logs/stats-before-sampling.txt || true
echo "prepared @@recipe: $(find "$SHARDS_DIR" -name 'shard-*.db' | wc -l) shards"
