"""Helpers for the security tests: a throwaway CA and broker certificate, SASL login
properties, and the Kafka admin tools (ACLs, SCRAM users) run against a test's own broker."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import os
import pathlib
import shlex
import subprocess
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kafka_common.settings import KafkaSettings
from kafka_common.topics import TopicSpec, ensure_topics
from support.harness import ROOT, Broker, Topics

PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule required"
SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule required"


@dataclasses.dataclass(frozen=True)
class TestPKI:
    """A CA (ca.pem) and a broker key and certificate signed by it, for 127.0.0.1 and
    localhost: broker.pem holds the unencrypted key and the certificate chain, which the broker
    reads as a PEM keystore."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    dir: pathlib.Path
    ca_file: pathlib.Path
    broker_keystore: pathlib.Path

    @classmethod
    def create(cls, directory: pathlib.Path, name: str = "gmm-test") -> TestPKI:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = _ca(f"{name} CA")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        keystore = directory / "broker.pem"
        keystore.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
            + ca_cert.public_bytes(serialization.Encoding.PEM)
        )
        keystore.chmod(0o600)
        return cls(directory, ca_file, keystore)

    @staticmethod
    def other_ca(path: pathlib.Path) -> pathlib.Path:
        """A CA that signed nothing the broker has (a client trusting it must refuse)."""
        _, cert = _ca("an unrelated CA")
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def plain_jaas(username: str, password: str, users: dict[str, str] | None = None) -> str:
    """A PLAIN login: the broker's own credentials and, on a listener, the users it accepts."""
    accepted = "".join(f' user_{name}="{secret}"' for name, secret in (users or {}).items())
    return f'{PLAIN} username="{username}" password="{password}"{accepted};'


def client_props(username: str, password: str, protocol: str = "SASL_PLAINTEXT") -> str:
    """Properties for a Kafka CLI tool logging in with PLAIN."""
    return (
        f"security.protocol={protocol}\nsasl.mechanism=PLAIN\n"
        f"sasl.jaas.config={plain_jaas(username, password)}\n"
    )


# Kafka's wire codes (org.apache.kafka.common.resource / acl).
RESOURCE_TYPES = {"--topic": 2, "--group": 3, "--cluster": 4, "--transactional-id": 5}
PATTERN_TYPES = {"literal": 3, "prefixed": 4}
OPERATIONS = {
    "all": 2,
    "read": 3,
    "write": 4,
    "create": 5,
    "delete": 6,
    "alter": 7,
    "describe": 8,
    "clusteraction": 9,
    "describeconfigs": 10,
    "alterconfigs": 11,
    "idempotentwrite": 12,
}
ALLOW = 3


@dataclasses.dataclass(frozen=True)
class Acl:
    """One allow rule: principal may do operation on a resource (Kafka's wire codes)."""

    principal: str
    operation: int
    resource_type: int
    name: str
    pattern_type: int = PATTERN_TYPES["literal"]


def parse_acl_line(line: str) -> list[Acl]:
    """The rules of one line of `kafka-acls --add` arguments (as deploy/compose/kafka-secure.sh
    prints them): every principal x operation x resource."""
    principals: list[str] = []
    operations: list[int] = []
    resources: list[tuple[int, str]] = []
    pattern = PATTERN_TYPES["literal"]
    args = iter(shlex.split(line))
    for flag in args:
        if flag == "--allow-principal":
            principals.append(next(args))
        elif flag == "--operation":
            operations.append(OPERATIONS[next(args).lower()])
        elif flag == "--resource-pattern-type":
            pattern = PATTERN_TYPES[next(args).lower()]
        elif flag == "--cluster":
            resources.append((RESOURCE_TYPES[flag], "kafka-cluster"))
        elif flag in RESOURCE_TYPES:
            resources.append((RESOURCE_TYPES[flag], next(args)))
        else:
            raise ValueError(f"unexpected {flag!r} in ACL line {line!r}")
    if not (principals and operations and resources):
        raise ValueError(f"ACL line {line!r} needs a principal, an operation and a resource")
    return [
        Acl(p, op, kind, name, pattern)
        for p in principals
        for op in operations
        for kind, name in resources
    ]


class AdminTools:
    """Administration of a test's own secured broker as its super user: ACLs through aiokafka's
    admin client (CreateAcls, DeleteAcls), SCRAM users through `kafka-configs`."""

    def __init__(self, broker: Broker, admin: KafkaSettings) -> None:
        self.broker = broker
        self.kafka = admin
        self.options = admin.client_options()
        # Broker() wrote the super user's client properties for its readiness probe.
        self.config = broker.env["KAFKA_CLIENT_PROPS"]

    def create_topics(self, specs: list[TopicSpec]) -> None:
        """The service's topics, as kafka-init creates them before any service starts."""
        asyncio.run(ensure_topics(self.kafka, specs))

    async def _send(self, requests: list[Any]) -> list[Any]:
        admin = AIOKafkaAdminClient(**self.options)
        await admin.start()
        try:
            return [await admin._send_request(r) for r in requests]
        finally:
            await admin.close()

    def add(self, acls: Iterable[Acl]) -> None:
        requests = [
            CreateAclsRequest(
                a.resource_type, a.name, a.pattern_type, a.principal, "*", a.operation, ALLOW
            )
            for a in acls
        ]
        for response in asyncio.run(self._send(requests)):
            for error_code, message in response.creation_responses:
                if error_code:
                    raise AssertionError(f"CreateAcls failed: {error_code} {message}")

    def remove(self, acls: Iterable[Acl]) -> int:
        """Deletes the rules; returns how many the broker matched."""
        requests = [
            DeleteAclsRequest(
                a.resource_type, a.name, a.pattern_type, a.principal, "*", a.operation, ALLOW
            )
            for a in acls
        ]
        matched = 0
        for response in asyncio.run(self._send(requests)):
            for error_code, message, matching in response.filter_responses:
                if error_code:
                    raise AssertionError(f"DeleteAcls failed: {error_code} {message}")
                matched += len(matching)
        return matched

    def add_lines(self, lines: Iterable[str]) -> list[Acl]:
        acls = [acl for line in lines if line.strip() for acl in parse_acl_line(line)]
        self.add(acls)
        return acls

    def tool(self, cls: str, *args: str) -> str:
        """A Kafka tool class from the broker's release (deploy/kafka/kafka.sh tool)."""
        done = subprocess.run(
            ["bash", str(ROOT / "deploy" / "kafka" / "kafka.sh"), "tool", cls, *args],
            env=self.broker.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise AssertionError(f"{cls} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def scram_user(self, mechanism: str, name: str, password: str) -> None:
        """Creates (or resets) a SCRAM user through the broker's admin API
        (AlterUserScramCredentials, as `kafka-configs --alter --add-config` sends it)."""
        self.tool(
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            self.broker.bootstrap,
            "--command-config",
            self.config,
            "--alter",
            "--add-config",
            f"{mechanism}=[iterations=4096,password={password}]",
            "--entity-type",
            "users",
            "--entity-name",
            name,
        )


def service_env(
    bootstrap: str,
    protocol: str,
    username: str = "",
    password: str = "",
    mechanism: str = "PLAIN",
    cafile: str | pathlib.Path = "",
) -> dict[str, str]:
    """The KAFKA_* variables a service process connects with."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_SECURITY_PROTOCOL": protocol}
    if protocol.startswith("SASL"):
        env |= {
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": username,
            "KAFKA_SASL_PASSWORD": password,
        }
    if "SSL" in protocol:
        env["KAFKA_SSL_CAFILE"] = str(cafile)
    return env


def settings_of(env: dict[str, str]) -> KafkaSettings:
    """The KafkaSettings a process with `env` would build (for a test's own clients)."""
    from kafka_common.settings import load

    return load(KafkaSettings, env)


def stack_topics(topics: Topics, partitions: int = 2) -> list[TopicSpec]:
    """Every topic of the stack, as kafka-init creates them (deploy/compose/kafka-secure.sh)."""
    from kafka_common.params_topic import history_spec, params_spec

    return [
        TopicSpec(topics.input, partitions),
        TopicSpec(topics.output, partitions),
        TopicSpec(topics.dlq, 1),
        TopicSpec(topics.events, 1),
        params_spec(topics.params),
        history_spec(topics.history),
    ]


def secure_acl_lines(topics: Topics) -> list[str]:
    """The ACLs deploy/compose/kafka-secure.sh grants, for the test's topics and group."""
    env = {
        "PATH": os.environ["PATH"],
        "GMM_INPUT_TOPIC": topics.input,
        "GMM_OUTPUT_TOPIC": topics.output,
        "GMM_PARAMS_TOPIC": topics.params,
        "GMM_HISTORY_TOPIC": topics.history,
        "GMM_EVENTS_TOPIC": topics.events,
        "GMM_DLQ_TOPIC": topics.dlq,
        "GMM_CONSUMER_GROUP": topics.group,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "compose" / "kafka-secure.sh"), "acls"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()
