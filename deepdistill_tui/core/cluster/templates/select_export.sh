#!/usr/bin/env bash
@@header

# 4. Fold the graded shards into the main store, print the statistics, select, and export the
#    training files the training job reads.
mkdir -p data logs
deepdistill-tui merge --db "$DB" "$SHARDS_DIR"/shard-*.db
deepdistill-tui stats --recipe recipe.yaml --db "$DB" | tee logs/stats.txt
deepdistill-tui select --recipe recipe.yaml --db "$DB" --name @@recipe
@@exports
