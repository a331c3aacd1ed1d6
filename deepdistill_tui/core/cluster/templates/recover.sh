#!/usr/bin/env bash
@@header
# After a fault (a failed or cancelled task, a server that died, a node lost), resubmit what did not
# complete, in chain order, and nothing that did: array steps get only their unfinished tasks,
# later steps wait for the resubmitted ones, and the teacher servers come back when sampling or
# grading runs again. Every step only does what its store is missing, so no sample is lost or
# doubled. Run it once the chain has stopped; it refuses while a step is still pending or running.
if [[ ! -s logs/jobs.tsv ]]; then
  echo "dd: logs/jobs.tsv is missing: nothing was submitted from this folder (run 'bash submit.sh')" >&2
  exit 2
fi

# states JOB: "TASK STATE" lines, from accounting where the cluster keeps it, else from squeue
# (which remembers finished jobs for MinJobAge only). Pending array ranges are expanded.
states() {
  local lines
  lines=$(sacct -n -X -P -j "$1" -o JobID,State 2> /dev/null) || lines=""
  if [[ -z "$lines" ]]; then
    lines=$(squeue -h -t all -j "$1" -o '%i|%T' 2> /dev/null) || lines=""
  fi
  local id state task lo hi part
  while IFS='|' read -r id state; do
    [[ -n "$id" ]] || continue
    state=${state%% *}
    task=${id#*_}
    if [[ "$id" != *_* ]]; then
      echo "- $state"
    elif [[ "$task" == \[* ]]; then
      task=${task#[}
      task=${task%]}
      task=${task%%\%*}
      for part in ${task//,/ }; do
        lo=${part%-*}
        hi=${part#*-}
        for ((t = lo; t <= hi; t++)); do echo "$t $state"; done
      done
    else
      echo "$task $state"
    fi
  done <<< "$lines"
}

declare -A job script
steps=()
while IFS=$'\t' read -r step id cmd; do
  steps+=("$step")
  job[$step]=$id
  script[$step]=$cmd
done < logs/jobs.tsv

for step in "${steps[@]}"; do
  [[ "$step" == serve:* ]] && continue
  if states "${job[$step]}" | grep -Eq ' (PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED|RESIZING|SUSPENDED)$'; then
    echo "dd: step $step (job ${job[$step]}) is still pending or running: wait for the chain to stop (squeue --me), then run recover.sh again" >&2
    exit 2
  fi
done

resubmit() {  # STEP AFTER [sbatch options...]: the step's script again; prints the new id
  local step=$1 after=$2 id
  shift 2
  local opts=(--parsable --kill-on-invalid-dep=yes "$@")
  if [[ -n "$PARTITION" ]]; then opts+=(--partition "$PARTITION"); fi
  if [[ -n "$after" ]]; then opts+=(--dependency "afterok:$after"); fi
  # shellcheck disable=SC2086  # the recorded command line is a script and its plain arguments
  id=$(sbatch "${opts[@]}" ${script[$step]})
  echo "${id%%;*}"
}

after=""
serving=no
for step in "${steps[@]}"; do
  [[ "$step" == serve:* ]] && continue
  listed=$(states "${job[$step]}")
  unfinished=$(awk '$2 != "COMPLETED" {print $1}' <<< "$listed" | paste -sd, -)
  if [[ -z "$after" && -n "$listed" && -z "$unfinished" ]]; then
    continue  # completed, and nothing before it runs again
  fi
  opts=()
  if [[ -z "$after" && -n "$unfinished" && "$unfinished" != - ]]; then
    opts=(--array "$unfinished")  # an array step: only its tasks that did not complete
  fi
  [[ -n "$listed" ]] || echo "dd: no record of $step (job ${job[$step]}): submitting it whole; it redoes only what is missing"
  old=${job[$step]}
  after=$(resubmit "$step" "$after" "${opts[@]}")
  job[$step]=$after
  echo "dd: $step: job $old did not complete${unfinished:+ (tasks ${unfinished})}; resubmitted as job $after"
  if [[ "$step" == sample || "$step" == grade ]]; then serving=yes; fi
done

if [[ "$serving" == yes ]]; then
  rm -f endpoints/release
  for step in "${steps[@]}"; do
    [[ "$step" == serve:* ]] || continue
    if ! states "${job[$step]}" | grep -Eq ' (PENDING|RUNNING|CONFIGURING)$'; then
      old=${job[$step]}
      rm -f "endpoints/${step#serve:}.url"
      new=$(resubmit "$step" "")
      job[$step]=$new
      echo "dd: $step: server job $old is gone; resubmitted as job $new"
    fi
  done
fi

if [[ -z "$after" && "$serving" == no ]]; then
  echo "dd: every step completed; nothing to resubmit"
  exit 0
fi
for step in "${steps[@]}"; do printf '%s\t%s\t%s\n' "$step" "${job[$step]}" "${script[$step]}"; done > logs/jobs.tsv
echo "dd: logs/jobs.tsv updated; follow the chain with: squeue --me"
