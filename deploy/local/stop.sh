#!/usr/bin/env bash
# Stops the broker that start.sh started for DATA_DIR: SIGTERM (clean shutdown,
# no log recovery on the next start), then SIGKILL if it is still up after
# TIMEOUT seconds (default 30).
# Usage: deploy/local/stop.sh DATA_DIR [TIMEOUT]
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 DATA_DIR [TIMEOUT]" >&2
  exit 2
fi

pid_file="$1/broker.pid"
timeout="${2:-30}"

if [[ ! -f "$pid_file" ]]; then
  echo "Kafka not running (no $pid_file)"
  exit 0
fi
pid="$(cat "$pid_file")"

# The pid may have been reused since the broker died: only signal a Kafka JVM.
if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
  echo "Kafka not running (stale pid $pid)"
  rm -f "$pid_file"
  exit 0
fi

kill -TERM "$pid"
deadline=$(( SECONDS + timeout ))
while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
  sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
  echo "Kafka (pid $pid) still up after ${timeout}s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
  done
fi
rm -f "$pid_file"
echo "Kafka stopped (pid $pid)"
