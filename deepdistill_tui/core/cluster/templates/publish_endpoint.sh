until curl -sf "http://$HOST:@@port/v1/models" > /dev/null; do
  kill -0 "$SERVER" 2> /dev/null || exit 1
  sleep 10
done
echo "http://$HOST:@@port/v1" > "endpoints/@@teacher.url"
