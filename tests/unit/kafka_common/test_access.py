"""The one-line messages of a refused client: missing ACLs, authorization errors, TLS."""

from __future__ import annotations

import ssl

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from kafka_common.access import OPERATIONS, Need, _allows, _missing
from kafka_common.connection import KafkaUnavailable, _tls_failure, describe_kafka_error
from kafka_common.settings import KafkaSettings, SettingsError, load


def bits(*operations: str) -> int:
    return sum(1 << OPERATIONS[op] for op in operations)


def test_authorized_operations_bit_field():
    assert _allows(bits("read", "describe"), "read")
    assert not _allows(bits("read", "describe"), "write")
    assert _allows(bits("write"), "describe")  # Write implies Describe
    assert not _allows(bits("create"), "read")
    assert _allows(-(2**31), "write")  # not computed by the broker: nothing to check


def test_a_need_names_a_known_operation_and_kind():
    with pytest.raises(ValueError):
        Need("topic", "t", "steal")
    with pytest.raises(ValueError):
        Need("cluster", "t", "read")


def test_a_missing_acl_is_one_line_naming_everything():
    error = _missing(Need("topic", "gmm.params", "read", "GMM_PARAMS_TOPIC"), "worker")
    assert isinstance(error, KafkaUnavailable)
    assert str(error) == (
        "not authorized: user 'worker' may not read topic 'gmm.params' (GMM_PARAMS_TOPIC); "
        "the broker's ACLs must allow Read on it"
    )
    assert "this client may not write group 'g'" in str(_missing(Need("group", "g", "write"), ""))


@pytest.mark.parametrize(
    ("exc", "expect"),
    [
        (TopicAuthorizationFailedError("gmm.params"), "access to topic 'gmm.params'"),
        (TopicAuthorizationFailedError({"b", "a"}), "access to topic 'a', 'b'"),
        (GroupAuthorizationFailedError("gmm-worker"), "access to consumer group 'gmm-worker'"),
        (
            TransactionalIdAuthorizationFailed("gmm-params-publisher-gmm"),
            "access to transactional id 'gmm-params-publisher-gmm'",
        ),
        (
            GroupAuthorizationFailedError("Unable to get coordinator id for g"),
            "access to consumer group: Unable to get coordinator id for g",
        ),
    ],
)
def test_authorization_errors_are_one_line(exc, expect):
    line = describe_kafka_error(exc, "broker:9092")
    assert line.startswith("not authorized at broker:9092: the broker's ACLs refused")
    assert expect in line and "\n" not in line


def test_an_untrusted_certificate_names_the_ca_setting():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    with_ca = KafkaSettings(security_protocol="SSL", ssl_cafile="/etc/ca.pem")
    assert _tls_failure("k:9093", with_ca, exc) == (
        "TLS handshake with k:9093 failed: the broker's certificate is not trusted "
        "(self-signed certificate in certificate chain); KAFKA_SSL_CAFILE=/etc/ca.pem must hold "
        "the CA that signed it"
    )
    system = KafkaSettings(security_protocol="SSL")
    assert "the system CAs (KAFKA_SSL_CAFILE is empty)" in _tls_failure("k:9093", system, exc)


def test_the_ca_file_is_checked_with_the_settings(tmp_path):
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(tmp_path / "none.pem")}
    with pytest.raises(SettingsError, match="cannot be read: No such file or directory"):
        load(KafkaSettings, env)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="holds no PEM CA certificate"):
        load(KafkaSettings, {**env, "KAFKA_SSL_CAFILE": str(garbage)})
    # Without TLS the file is not used, so not checked.
    load(KafkaSettings, {**env, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
