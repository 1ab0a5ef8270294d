#!/usr/bin/env bash
# Runs a pinned Apache Kafka broker (KRaft, single node: broker + controller) on loopback.
#
#   deploy/kafka/kafka.sh up      fetch (once), format (once), start, wait until it serves requests
#   deploy/kafka/kafka.sh down    stop it cleanly (SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT)
#   deploy/kafka/kafka.sh status  exit 0 if it is running
#   deploy/kafka/kafka.sh tool CLASS ARGS...   run a Kafka admin tool class from the same release
#
# Environment (all optional):
#   KAFKA_PORT             client listener port                 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port                (default KAFKA_PORT+1)
#   KAFKA_STATE_DIR        data, logs and pid file              (default <repo>/.kafka/<KAFKA_PORT>)
#   KAFKA_LIBS_DIR         cached broker jars                   (default <repo>/.kafka/libs)
#   KAFKA_HEAP_OPTS        JVM heap                             (default -Xms256m -Xmx768m)
#   KAFKA_EXTRA_PROPS      a file appended to server.properties (e.g. SASL listeners; later keys win)
#   KAFKA_CLIENT_PROPS     client properties for the readiness probe (e.g. SASL credentials)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness        (default 90)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
state="${KAFKA_STATE_DIR:-$repo/.kafka/$port}"
libs="${KAFKA_LIBS_DIR:-$repo/.kafka/libs}"
heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
start_timeout="${KAFKA_START_TIMEOUT:-90}"
stop_timeout="${KAFKA_STOP_TIMEOUT:-30}"
pidfile="$state/broker.pid"
logfile="$state/logs/broker.log"

die() { echo "kafka: $*" >&2; exit 1; }

require_java() {
  command -v java >/dev/null 2>&1 || die "Java 17+ is required but 'java' is not on PATH"
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  [[ "${v%%.*}" =~ ^[0-9]+$ && "${v%%.*}" -ge 17 ]] || die "Java 17+ is required, found Java ${v:-unknown}"
}

# The jars are cached beside a stamp of the pom they came from; a matching stamp means no Maven run.
fetch() {
  local stamp want
  want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  stamp="$libs/.pom.sha256"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the broker but 'mvn' is not on PATH"
  echo "kafka: fetching the broker jars with Maven into $libs" >&2
  rm -rf "$libs.tmp"
  # Offline first: a warm ~/.m2 makes this a local copy with no network at all.
  if ! mvn -o -q -B -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >/dev/null 2>&1; then
    rm -rf "$libs.tmp"
    mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >&2 \
      || die "Maven could not fetch org.apache.kafka:kafka_2.13 (see the output above)"
  fi
  rm -rf "$libs"
  mv "$libs.tmp" "$libs"
  echo "$want" >"$stamp"
}

java_run() {
  # shellcheck disable=SC2086
  java $heap -cp "$libs/*" -Dlog4j2.configurationFile="$here/log4j2.properties" "$@"
}

tool() {
  java -Xmx256m -cp "$libs/*" -Dlog4j2.configurationFile="$here/log4j2-tools.properties" "$@"
}

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

write_config() {
  mkdir -p "$state/data" "$state/logs"
  cat >"$state/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# One node: a consumer group need not wait for more members before its first assignment.
group.initial.rebalance.delay.ms=0
# A restarted node must wait out its previous incarnation's session (default 9 s) before it
# registers again; on one loopback node a short session makes restarts quick.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
log.retention.hours=24
log.segment.bytes=67108864
EOF
  if [[ -n "${KAFKA_EXTRA_PROPS:-}" ]]; then
    cat "$KAFKA_EXTRA_PROPS" >>"$state/server.properties"
  fi
}

format_once() {
  [[ -f "$state/data/meta.properties" ]] && return 0
  local cluster_id
  cluster_id="$(tool kafka.tools.StorageTool random-uuid | tail -n1)"
  tool kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" >/dev/null
}

probe() {
  local extra=()
  [[ -n "${KAFKA_CLIENT_PROPS:-}" ]] && extra=(--command-config "$KAFKA_CLIENT_PROPS")
  tool org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "127.0.0.1:$port" \
    "${extra[@]}" >/dev/null 2>&1
}

up() {
  require_java
  fetch
  if running; then
    echo "kafka: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is taken by another process; set KAFKA_PORT"
  fi
  write_config
  format_once
  local t0=$SECONDS
  # A fresh log per start, so readiness is never read off a previous run's lines.
  [[ -f "$logfile" ]] && mv -f "$logfile" "$logfile.1"
  # setsid: the broker outlives the shell that started it (make, a test fixture).
  setsid bash -c "exec java $heap -cp '$libs/*' -Dlog4j2.configurationFile='$here/log4j2.properties' \
      -Dkafka.logs.dir='$state/logs' kafka.Kafka '$state/server.properties'" \
    >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  until grep -q "Kafka Server started" "$logfile" 2>/dev/null && probe; do
    if ! running; then
      tail -n 20 "$logfile" >&2 || true
      die "the broker exited during start-up; log: $logfile"
    fi
    if (( SECONDS - t0 > start_timeout )); then
      down >/dev/null 2>&1 || true
      die "the broker did not become ready within ${start_timeout}s; log: $logfile"
    fi
    sleep 0.5
  done
  echo "kafka: ready on 127.0.0.1:$port (pid $(cat "$pidfile"), $((SECONDS - t0))s); log: $logfile"
}

down() {
  if ! running; then
    rm -f "$pidfile"
    echo "kafka: not running"
    return 0
  fi
  local pid t0=$SECONDS
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - t0 > stop_timeout )); then
      echo "kafka: no clean stop within ${stop_timeout}s, killing pid $pid" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
  echo "kafka: stopped (pid $pid)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "kafka: running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "kafka: not running"; exit 1; fi ;;
  fetch) require_java; fetch ;;
  tool) shift; require_java; fetch; tool "$@" ;;
  *) echo "usage: $0 up|down|status|fetch|tool CLASS ARGS..." >&2; exit 2 ;;
esac
