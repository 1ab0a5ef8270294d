"""Settings from the environment: defaults, parsing, validation with the variable's name."""

from __future__ import annotations

import pytest

from kafka_common.settings import KafkaSettings, SettingsError, describe, load
from stream_app.settings import WorkerSettings


def test_defaults():
    s = WorkerSettings.from_env({})
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert (s.input_topic, s.output_topic, s.params_topic, s.dlq_topic) == (
        "gmm.points",
        "gmm.assignments",
        "gmm.params",
        "gmm.deadletter",
    )
    assert s.web_port == 6066 and s.temperature == 0


def test_values_are_parsed_and_typed():
    s = WorkerSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2",
            "GMM_MAX_BATCH": "256",
            "GMM_MAX_DELAY_MS": "7.5",
            "GMM_TEMPERATURE": "1",
            "GMM_INPUT_TOPIC": "in",
        }
    )
    assert s.kafka.servers == ["a:1", "b:2"]
    assert (s.max_batch, s.max_delay_ms, s.temperature, s.input_topic) == (256, 7.5, 1, "in")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GMM_MAX_BATCH": "many"}, "GMM_MAX_BATCH='many' is not a valid int"),
        ({"GMM_MAX_BATCH": "0"}, "GMM_MAX_BATCH must be >= 1"),
        ({"GMM_TEMPERATURE": "2"}, "GMM_TEMPERATURE=2 must be one of 0, 1"),
        ({"GMM_WORKER_WEB_PORT": "70000"}, "GMM_WORKER_WEB_PORT must be a port"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohostport"}, "is not host:port"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT"),
        ({"GMM_PARAMS_FILE": "/nonexistent/params.json"}, "cannot be read"),
    ],
)
def test_bad_values_name_their_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        WorkerSettings.from_env(env)


def test_sasl_client_options_come_from_the_environment():
    k = load(
        KafkaSettings,
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "s3cret",
        },
    )
    opts = k.client_options()
    assert opts["security_protocol"] == "SASL_PLAINTEXT"
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]) == (
        "PLAIN",
        "svc",
        "s3cret",
    )
    assert "ssl_context" not in opts


def test_every_setting_is_documented():
    rows = describe(WorkerSettings)
    names = [env for env, _, _ in rows]
    assert len(names) == len(set(names))
    assert {
        "KAFKA_BOOTSTRAP_SERVERS",
        "GMM_INPUT_TOPIC",
        "GMM_WORKER_WEB_PORT",
        "KAFKA_SASL_PASSWORD",
    } <= set(names)
    assert all(doc for _, _, doc in rows)
