SERVER=$!
# However this job ends, its address goes with it: no task reads a stale endpoint.
trap 'rm -f "endpoints/@@teacher.url"; kill "$SERVER" 2> /dev/null || true' EXIT
trap 'exit 143' TERM
until curl -sf "http://$HOST:@@port/v1/models" > /dev/null; do
  if ! kill -0 "$SERVER" 2> /dev/null; then
    echo "dd: the @@teacher server exited before it answered" >&2
    exit 1
  fi
  sleep 5
done
echo "http://$HOST:@@port/v1" > "endpoints/@@teacher.url"
echo "dd: teacher @@teacher serving at http://$HOST:@@port/v1"
# Serve until grading is done: jobs/04_select_export.sh writes endpoints/release, and the job ends
# COMPLETED, freeing its nodes. A server that stops unasked fails the job.
while kill -0 "$SERVER" 2> /dev/null; do
  if [[ -f endpoints/release ]]; then
    echo "dd: released after grading; stopping the @@teacher server"
    exit 0
  fi
  sleep 5
done
status=0
wait "$SERVER" || status=$?
echo "dd: the @@teacher server stopped unasked (exit $status)" >&2
exit 1
