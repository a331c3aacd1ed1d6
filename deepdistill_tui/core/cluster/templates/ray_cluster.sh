# Pipeline stages span nodes: vLLM runs them on a Ray cluster over this job's nodes.
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun --nodes=1 --ntasks=1 -w "$HEAD" ray start --head --port=6379 --block &
sleep 20
srun --nodes=$((SLURM_NNODES - 1)) --ntasks=$((SLURM_NNODES - 1)) -x "$HEAD" \
  ray start --address="$HEAD:6379" --block &
sleep 20
