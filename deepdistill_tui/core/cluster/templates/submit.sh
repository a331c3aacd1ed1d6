#!/usr/bin/env bash
@@header
# The whole chain, submitted from this folder with its dependencies:
#   prepare -> sample (array) -> grade (array) -> select & export -> train (one job per stage),
# with one server per teacher beside them. Sampling tasks wait for the servers' addresses in
# endpoints/; the select job releases the servers when grading is done. A job whose dependency failed
# is cancelled at once (--kill-on-invalid-dep), so a fault stops the chain instead of leaving it
# pending; `bash recover.sh` then resubmits what did not complete. Job ids go to logs/jobs.tsv.
if [[ -s logs/jobs.tsv && "${1:-}" != --again ]]; then
  echo "dd: this bundle was submitted already (logs/jobs.tsv): resume with 'bash recover.sh', or start over with 'bash submit.sh --again'" >&2
  exit 2
fi
mkdir -p logs endpoints store data
rm -f endpoints/*.url endpoints/release
: > logs/jobs.tsv

# submit STEP AFTER SCRIPT [ARGS...]: sbatch SCRIPT (after job AFTER completes, when given); the id
# goes to logs/jobs.tsv with what recover.sh needs to submit the step again.
submit() {
  local step=$1 after=$2 id
  shift 2
  local opts=(--parsable --kill-on-invalid-dep=yes)
  if [[ -n "$PARTITION" ]]; then opts+=(--partition "$PARTITION"); fi
  if [[ -n "$after" ]]; then opts+=(--dependency "afterok:$after"); fi
  id=$(sbatch "${opts[@]}" "$@")
  id=${id%%;*}
  printf '%s\t%s\t%s\n' "$step" "$id" "$*" >> logs/jobs.tsv
  echo "$id"
}

prepare=$(submit prepare "" jobs/01_prepare.sh)
# shellcheck disable=SC2043  # one teacher, or one stage, is a list too
for teacher in @@teachers; do
  submit "serve:$teacher" "" "serve/$teacher.$INFERENCE_ENGINE.sbatch" > /dev/null
done
sample=$(submit sample "$prepare" jobs/02_sample.sbatch)
grade=$(submit grade "$sample" jobs/03_grade.sbatch)
after=$(submit select "$grade" jobs/04_select_export.sh)
# shellcheck disable=SC2043
for stage in @@stages; do
  after=$(submit "train:$stage" "$after" train/train.sbatch "train/$stage")
done
echo "dd: submitted $(wc -l < logs/jobs.tsv) jobs (logs/jobs.tsv); follow them with: squeue --me"
