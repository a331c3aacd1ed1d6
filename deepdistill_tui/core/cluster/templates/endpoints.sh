# The teachers' servers publish their addresses in endpoints/ once they answer (serve/*.sbatch).
# Wait for each one this job needs, then check that it answers: a job that cannot reach a teacher
# stops with one line in its log, never hangs.
ENDPOINTS=()
# shellcheck disable=SC2043  # one teacher is a list too
for teacher in @@teachers; do
  url_file="endpoints/$teacher.url"
  waited=0
  until [[ -s "$url_file" ]]; do
    if ((waited >= ENDPOINT_WAIT_S)); then
      echo "dd: teacher $teacher has no endpoint after ${ENDPOINT_WAIT_S}s ($url_file is missing; is its serve job running? squeue --name dd-serve-$teacher)" >&2
      exit 3
    fi
    sleep 5
    waited=$((waited + 5))
  done
  url=$(< "$url_file")
  if ! curl -sf --max-time 30 "$url/models" > /dev/null; then
    echo "dd: teacher $teacher does not answer at $url (from $url_file): its server has stopped; see RECOVERY in README.md" >&2
    exit 3
  fi
  ENDPOINTS+=(--endpoint "$teacher=$url")
done
