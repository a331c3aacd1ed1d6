#!/usr/bin/env bash
#SBATCH --job-name=dd-select
@@resources
#SBATCH --time=1-00:00:00
#SBATCH --output=logs/%x-%j.out
@@header

# 4. Grading is done: release the teacher servers, fold the graded shards into the main store, print
#    the statistics, select, and export the training files the training job reads.
mkdir -p data logs endpoints
touch endpoints/release
deepdistill-tui merge --db "$DB" "$SHARDS_DIR"/shard-*.db
deepdistill-tui stats --recipe recipe.yaml --db "$DB" | tee logs/stats.txt
deepdistill-tui select --recipe recipe.yaml --db "$DB" --name @@recipe
@@exports
