"""Settings from the environment: defaults, parsing, validation with the variable's name."""

from __future__ import annotations

import dataclasses
import logging
import re
import typing

import pytest

from kafka_common import zstd_level
from kafka_common.settings import KafkaSettings, Secret, SettingsError, describe, load
from stream_app.settings import WorkerSettings
from trainer.settings import TrainerSettings


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
        ({"GMM_OUTPUT_COMPRESSION": "brotli"}, "must be one of none, gzip, snappy, lz4, zstd"),
        ({"GMM_FETCH_PARTITION_MAX_BYTES": "100"}, "GMM_FETCH_PARTITION_MAX_BYTES must be between"),
        ({"GMM_FETCH_MAX_BYTES": str(2**31)}, "GMM_FETCH_MAX_BYTES must be between 1024 and"),
        ({"GMM_FETCH_DECOMPRESSED_MAX_BYTES": "0"}, "GMM_FETCH_DECOMPRESSED_MAX_BYTES must be"),
        ({"GMM_FETCH_MAX_BYTES": "2048"}, "GMM_FETCH_MAX_BYTES .2048. must be >="),
        ({"GMM_MAX_BATCH_BYTES": "10"}, "GMM_MAX_BATCH_BYTES must be >= 1024"),
        ({"GMM_MAX_KEY_BYTES": "999999"}, "GMM_MAX_KEY_BYTES must be between 0 and"),
        ({"GMM_OUTPUT_ZSTD_LEVEL": "0"}, "GMM_OUTPUT_ZSTD_LEVEL must be between 1 and 19"),
        ({"GMM_OUTPUT_ZSTD_LEVEL": "22"}, "GMM_OUTPUT_ZSTD_LEVEL must be between 1 and 19"),
    ],
)
def test_bad_values_name_their_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        WorkerSettings.from_env(env)


def test_every_consumer_reads_committed_records_in_bounded_fetches_and_producers_compress():
    kafka = WorkerSettings.from_env(
        {"GMM_FETCH_MAX_BYTES": "2097152", "GMM_OUTPUT_COMPRESSION": "zstd"}
    ).kafka
    consumer = kafka.consumer_options()
    assert consumer["isolation_level"] == "read_committed"
    assert (consumer["fetch_max_bytes"], consumer["max_partition_fetch_bytes"]) == (
        2097152,
        1 << 20,
    )
    assert kafka.producer_options()["compression_type"] == "zstd"
    assert zstd_level.installed_level() == 1  # GMM_OUTPUT_ZSTD_LEVEL's default
    WorkerSettings.from_env({"GMM_OUTPUT_ZSTD_LEVEL": "7"}).kafka.producer_options()
    assert zstd_level.installed_level() == 7
    kafka.producer_options()
    none = WorkerSettings.from_env({"GMM_OUTPUT_COMPRESSION": "none"}).kafka
    assert none.producer_options()["compression_type"] is None
    assert "compression_type" not in kafka.client_options()  # admin clients take neither


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


PASSWORD = "hunter2-do-not-print"
SASL_ENV = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_USERNAME": "svc",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


def _secret_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _secret_fields(f.default_factory)
        elif "env" in f.metadata:
            yield f.metadata["env"], f.metadata["secret"], hints[f.name]


@pytest.mark.parametrize("cls", [WorkerSettings, TrainerSettings])
def test_password_like_settings_are_secret(cls):
    """Every setting named like a password is marked secret and held as a Secret."""
    fields = list(_secret_fields(cls))
    assert ("KAFKA_SASL_PASSWORD", True, Secret) in fields
    for env, secret, hint in fields:
        if re.search("PASSWORD|SECRET|TOKEN|PASSPHRASE", env):
            assert secret, f"{env} must be env_field(..., secret=True)"
        if secret:
            assert hint is Secret, f"{env} must be typed Secret"


@pytest.mark.parametrize("cls", [WorkerSettings, TrainerSettings])
def test_secrets_never_appear_in_a_repr_or_a_log_line(cls, caplog):
    settings = cls.from_env(SASL_ENV)
    password = settings.kafka.sasl_password
    shown = [
        repr(settings),
        str(settings),
        f"{settings}",
        repr(settings.kafka),
        repr(dataclasses.asdict(settings)),
        repr(password),
        str(password),
        f"{password} {password!r} {password:>30}",
        "%s %r" % (password, password),  # noqa: UP031  (the logging module's own formatting)
    ]
    log = logging.getLogger("gmm.test.secrets")
    with caplog.at_level(logging.DEBUG, logger="gmm.test.secrets"):
        log.info("settings %s", settings)
        log.info("settings %r", settings)
        log.info("kafka %s password %s", settings.kafka, password)
        log.warning("asdict %s", dataclasses.asdict(settings))
    shown.append(caplog.text)
    for text in shown:
        assert PASSWORD not in text
    assert "sasl_password=Secret('**********')" in repr(settings)
    assert caplog.text.count("**********") >= 4


def test_every_user_of_the_password_gets_the_real_value():
    from stream_app.app import broker_credentials

    settings = WorkerSettings.from_env(SASL_ENV)
    assert settings.kafka.sasl_password.reveal() == PASSWORD
    assert settings.kafka.client_options()["sasl_plain_password"] == PASSWORD
    assert broker_credentials(settings).password == PASSWORD
    assert PASSWORD not in repr(broker_credentials(settings))


def test_secret_value_semantics():
    assert not Secret() and Secret("x") and str(Secret()) == "" and repr(Secret()) == "Secret('')"
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1
    assert Secret(Secret("a")).reveal() == "a"
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]
    # Built in code rather than from the environment: held as a Secret all the same.
    direct = KafkaSettings(sasl_password="p")  # type: ignore[arg-type]
    assert isinstance(direct.sasl_password, Secret) and direct.sasl_password.reveal() == "p"
    assert load(KafkaSettings, {}).sasl_password == Secret("")
    # The configuration table (docs/configuration.md) shows no default for the password, nor a mask.
    (row,) = [r for r in describe(KafkaSettings) if r[0] == "KAFKA_SASL_PASSWORD"]
    assert row[1] == ""
