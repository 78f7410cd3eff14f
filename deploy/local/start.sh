#!/usr/bin/env bash
# Starts a single-node KRaft Kafka broker on 127.0.0.1 in the background, for
# `make run` and manual testing; stop it with stop.sh.
#
# Usage: deploy/local/start.sh DATA_DIR [PORT] [CONTROLLER_PORT]
#
# Ports default to the ones DATA_DIR was last started with, else 9092/9093.
# The storage is formatted (with a fresh cluster id) only the first time.
# Environment: KAFKA_HEAP_MB (default 512), KAFKA_START_TIMEOUT seconds
# (default 60), METERING_KAFKA_DIST (a directory whose lib/ holds the jars).
#
# DATA_DIR layout (shared with devtools/local_kafka.py):
#   server.properties       rendered from deploy/local/server.properties
#   local-kafka.properties  cluster.id, port, controller.port of this node
#   kraft-logs/             topic data and the metadata log
#   logs/server.log         broker log (log4j2)
#   broker.out              JVM stdout/stderr
#   broker.pid
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 DATA_DIR [PORT] [CONTROLLER_PORT]" >&2
  exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist="${METERING_KAFKA_DIST:-$here}"
lib="$dist/lib"
heap_mb="${KAFKA_HEAP_MB:-512}"
# Templates come from the dist dir when it carries its own, as in devtools/local_kafka.py.
template() { if [[ -f "$dist/$1" ]]; then echo "$dist/$1"; else echo "$here/$1"; fi; }
timeout="${KAFKA_START_TIMEOUT:-60}"

mkdir -p "$1"
data_dir="$(cd "$1" && pwd)"
state="$data_dir/local-kafka.properties"
pid_file="$data_dir/broker.pid"
log_dir="$data_dir/kraft-logs"
server_log="$data_dir/logs/server.log"

state_get() {
  [[ -f "$state" ]] && sed -n "s/^$1=//p" "$state" | head -n 1
  return 0
}

port="${2:-$(state_get port)}"
port="${port:-9092}"
controller_port="${3:-$(state_get controller.port)}"
controller_port="${controller_port:-9093}"

if [[ -f "$pid_file" ]]; then
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
    echo "Kafka already running (pid $pid) on 127.0.0.1:$(state_get port) for $data_dir"
    exit 0
  fi
  rm -f "$pid_file"
fi

"$here/fetch.sh"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  java="$JAVA_HOME/bin/java"
elif command -v java >/dev/null 2>&1; then
  java="$(command -v java)"
else
  echo "Java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME." >&2
  exit 1
fi

mkdir -p "$data_dir/logs" "$log_dir"
sed -e "s|\${KAFKA_PORT}|$port|g" \
    -e "s|\${KAFKA_CONTROLLER_PORT}|$controller_port|g" \
    -e "s|\${KAFKA_LOG_DIR}|$log_dir|g" \
    "$(template server.properties)" >"$data_dir/server.properties"

jvm_common=(
  "-Dkafka.logs.dir=$data_dir/logs"
  "-Dlog4j2.configurationFile=$(template log4j2.yaml)"
  -Djava.awt.headless=true
  -cp "$lib/*"
)

if [[ -f "$log_dir/meta.properties" ]]; then
  cluster_id="$(sed -n 's/^cluster.id=//p' "$log_dir/meta.properties")"
else
  cluster_id="$(state_get cluster.id)"
  if [[ -z "$cluster_id" ]]; then
    cluster_id="$("$java" -Xmx128m "${jvm_common[@]}" kafka.tools.StorageTool random-uuid)"
  fi
  "$java" -Xmx256m "${jvm_common[@]}" kafka.tools.StorageTool format \
    --config "$data_dir/server.properties" --cluster-id "$cluster_id" --ignore-formatted \
    >>"$data_dir/broker.out" 2>&1 || {
      echo "Formatting $log_dir failed; see $data_dir/broker.out:" >&2
      tail -n 20 "$data_dir/broker.out" >&2
      exit 1
    }
fi
printf 'cluster.id=%s\nport=%s\ncontroller.port=%s\n' "$cluster_id" "$port" "$controller_port" >"$state"

log_offset=0
[[ -f "$server_log" ]] && log_offset="$(stat -c %s "$server_log")"

echo "=== $(date -u +%FT%TZ) start.sh: starting on 127.0.0.1:$port" >>"$data_dir/broker.out"
# setsid: own session, so Ctrl-C in the calling terminal does not reach it.
# The inner shell writes its own pid and then becomes the JVM.
# shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
  "$java" "-Xmx${heap_mb}m" "-Xms$(( heap_mb < 128 ? heap_mb : 128 ))m" \
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
  -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
  "${jvm_common[@]}" kafka.Kafka "$data_dir/server.properties" \
  >>"$data_dir/broker.out" 2>&1 </dev/null &

deadline=$(( SECONDS + timeout ))
while (( SECONDS < deadline )); do
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  if [[ -f "$server_log" ]] && tail -c +"$(( log_offset + 1 ))" "$server_log" | grep -q 'Kafka Server started'; then
    echo "Kafka started (pid $pid) on 127.0.0.1:$port; data and logs in $data_dir"
    exit 0
  fi
  sleep 0.2
done

echo "Kafka did not start within ${timeout}s; last lines of $server_log and $data_dir/broker.out:" >&2
tail -n 20 "$server_log" >&2 2>/dev/null || true
tail -n 20 "$data_dir/broker.out" >&2 || true
"$here/stop.sh" "$data_dir" >/dev/null 2>&1 || true
exit 1
