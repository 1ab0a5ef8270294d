#!/usr/bin/env bash
# The broker side of docker-compose.secure.yml, run inside the apache/kafka containers:
#   kafka-secure.sh health   the kafka service's healthcheck: an ApiVersions round trip over
#                            SASL_SSL as the broker's super user
#   kafka-secure.sh init     kafka-init: creates the topics, then the ACLs of each service user
#   kafka-secure.sh acls     prints the ACL commands init would run (no broker needed)
# The super user's password comes from GMM_KAFKA_BROKER_PASSWORD and reaches the Kafka tools
# only through a client config file that is private to this process and removed when it exits:
# never a command line, never a log line. The CA is GMM_KAFKA_CA_FILE (PEM).
set -euo pipefail

bin=${KAFKA_BIN:-/opt/kafka/bin}
bootstrap=${GMM_KAFKA_INIT_BOOTSTRAP:-kafka:9092}
admin=${GMM_KAFKA_ADMIN_USER:-broker}
input=${GMM_INPUT_TOPIC:-gmm.points}
output=${GMM_OUTPUT_TOPIC:-gmm.assignments}
params=${GMM_PARAMS_TOPIC:-gmm.params}
history=${GMM_HISTORY_TOPIC:-gmm.params.history}
events=${GMM_EVENTS_TOPIC:-gmm.events}
dlq=${GMM_DLQ_TOPIC:-gmm.deadletter}
group=${GMM_CONSUMER_GROUP:-gmm-worker}
faust_app="$group-app"  # stream_app/app.py: the Faust app id, its consumer group and topic prefix

client_config() {
  : "${GMM_KAFKA_BROKER_PASSWORD:?set GMM_KAFKA_BROKER_PASSWORD}"
  : "${GMM_KAFKA_CA_FILE:?set GMM_KAFKA_CA_FILE (the CA that signed the broker certificate)}"
  umask 077
  conf=$(mktemp)
  trap 'rm -f "$conf"' EXIT
  # printf is a shell builtin: the password is on no process's command line.
  printf '%s\n' \
    "security.protocol=SASL_SSL" \
    "sasl.mechanism=PLAIN" \
    "ssl.truststore.type=PEM" \
    "ssl.truststore.location=$GMM_KAFKA_CA_FILE" \
    "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$admin\" password=\"$GMM_KAFKA_BROKER_PASSWORD\";" \
    >"$conf"
}

topic() {
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --command-config "$conf" \
    --create --if-not-exists "$@"
}

# Least privilege, one principal per service (READ and WRITE imply DESCRIBE):
#   trainer   reads the input window (no consumer group); reads and writes the params and
#             history topics, in transactions whose ids start gmm-params-publisher-
#             (kafka_common/params_topic.py: compare-and-set publishing); reads the events
#             (drift alarms, shadow scores) and writes its own (promotions)
#   worker    reads input (group $group) and params; writes assignments, dead letters and
#             events; its Faust app uses the group $faust_app and creates its own internal topics
#   producer  writes the input topic, nothing else
# tests/integration/security/test_acls.py runs these lines against a real broker.
acl_lines() {
  cat <<LINES
--allow-principal User:trainer --operation Read --topic $input
--allow-principal User:trainer --operation Read --operation Write --topic $params --topic $history --topic $events
--allow-principal User:trainer --operation Write --operation Describe --resource-pattern-type prefixed --transactional-id gmm-params-publisher-
--allow-principal User:worker --operation Read --topic $input --topic $params
--allow-principal User:worker --operation Write --topic $output --topic $dlq --topic $events
--allow-principal User:worker --operation Read --group $group --group $faust_app
--allow-principal User:worker --operation Create --operation Read --operation Write --resource-pattern-type prefixed --topic $faust_app-
--allow-principal User:producer --operation Write --topic $input
LINES
}

case "${1:-}" in
  health)
    client_config
    "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$bootstrap" --command-config "$conf" >/dev/null
    ;;
  init)
    client_config
    topic --topic "$input" --partitions 4 --replication-factor 1
    topic --topic "$output" --partitions 4 --replication-factor 1
    topic --topic "$dlq" --partitions 1 --replication-factor 1
    topic --topic "$params" --partitions 1 --replication-factor 1 --config cleanup.policy=compact \
      --config min.compaction.lag.ms=604800000
    topic --topic "$history" --partitions 1 --replication-factor 1 --config retention.ms=-1 --config retention.bytes=-1
    topic --topic "$events" --partitions 1 --replication-factor 1
    while read -r -a args; do
      "$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" --command-config "$conf" --add --force "${args[@]}"
    done < <(acl_lines)
    echo "kafka-init: topics and ACLs in place"
    ;;
  acls)
    acl_lines
    ;;
  *)
    echo "usage: $0 health|init|acls" >&2
    exit 2
    ;;
esac
