"""Typed settings built once per process from environment variables.

Each field names its variable and documents itself (`env_field`), so `load()` can parse and
validate all of them in one place and docs/configuration.md's tables can be generated from the
same source (`python -m stream_app.settings --markdown`). Secrets come only from the environment,
and a secret setting is held as a `Secret`, which no repr, str, format or log line shows.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
import ssl
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""


class Secret:
    """A secret setting's value (a password). repr, str and format show a mask, never the value,
    so neither a settings object's repr nor a log line that formats one can leak it; `reveal()`
    gives the value to the one place that needs it (the Kafka client's options)."""

    __slots__ = ("_value",)
    MASK = "**********"

    def __init__(self, value: str = "") -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __str__(self) -> str:
        return self.MASK if self._value else ""

    def __repr__(self) -> str:
        return f"Secret({str(self)!r})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def env_field(
    env: str,
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field read from the environment variable `env`."""
    return dataclasses.field(
        default=default,
        metadata={"env": env, "doc": doc, "secret": secret, "choices": choices},
    )


#: A model name: the params records' key, part of a transactional id and of a report path.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def model_name_field() -> Any:
    """GMM_MODEL_NAME: the same variable and meaning for the worker, the trainer and the CLI."""
    return env_field(
        "GMM_MODEL_NAME",
        "gmm",
        "Name of the model (the key of its records on the params topics): the worker serves "
        "it, the trainer publishes it",
    )


def input_topic_field() -> Any:
    """GMM_INPUT_TOPIC: the points the worker classifies and the trainer's window reads."""
    return env_field("GMM_INPUT_TOPIC", "gmm.points", "Topic of data points to classify")


def params_topic_field() -> Any:
    """GMM_PARAMS_TOPIC: the trainer publishes each model there, the worker serves from it."""
    return env_field(
        "GMM_PARAMS_TOPIC", "gmm.params", "Compacted topic of versioned model parameters"
    )


def events_topic_field() -> Any:
    """GMM_EVENTS_TOPIC: where workers report drift alarms and shadow scores, and the trainer
    reads them (and reports promotions)."""
    return env_field(
        "GMM_EVENTS_TOPIC",
        "gmm.events",
        "Topic of model events (drift alarms, shadow scores, promotions); empty: none",
    )


def check_model_name(name: str) -> None:
    """A SettingsError unless `name` is 1-64 of letters, digits, '.', '_', '-' (not first)."""
    if not _MODEL_NAME.fullmatch(name):
        raise SettingsError(
            f"GMM_MODEL_NAME must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), got {name!r}"
        )


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is Secret:
        return Secret(raw)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def _nested(f: dataclasses.Field) -> type | None:
    """The settings class of a nested-settings field (one whose default factory is a dataclass)."""
    factory = f.default_factory
    if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
        return factory
    return None


def load(cls: type[T], environ: Mapping[str, str], **overrides: Any) -> T:
    """Builds settings dataclass `cls` from `environ`, nested settings included, and validates."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif (sub := _nested(f)) is not None:
            values[f.name] = load(sub, environ)
        elif (env := f.metadata.get("env")) is not None and env in environ:
            kind = Secret if f.metadata.get("secret") else hints[f.name]
            value = _parse(env, environ[env], kind)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise SettingsError(
                    f"{env}={value!r} must be one of {', '.join(map(str, choices))}"
                )
            values[f.name] = value
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting of cls, nested ones included."""
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        if (sub := _nested(f)) is not None:
            rows.extend(describe(sub))
            continue
        env = f.metadata.get("env")
        if env is None:
            continue
        default = "" if f.default in (None, "") else str(f.default)
        doc = f.metadata["doc"]
        if f.metadata.get("choices"):
            doc += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        rows.append((env, default, doc))
    return rows


def markdown_table(cls: type) -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | {f'`{d}`' if d else ''} | {doc} |" for env, d, doc in describe(cls)]
    return "\n".join(lines) + "\n"


_INT32_MAX = 2**31 - 1

#: Record-batch codecs Kafka has; every consumer of the project reads all of them.
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """How to reach the brokers; shared by every process of the service."""

    bootstrap_servers: str = env_field(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092", "Kafka brokers, comma-separated host:port"
    )
    security_protocol: str = env_field(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "Kafka security protocol",
        choices=SECURITY_PROTOCOLS,
    )
    sasl_mechanism: str = env_field(
        "KAFKA_SASL_MECHANISM",
        "PLAIN",
        "SASL mechanism when the protocol is SASL_*",
        choices=SASL_MECHANISMS,
    )
    sasl_username: str = env_field("KAFKA_SASL_USERNAME", "", "SASL user name")
    sasl_password: Secret = env_field(  # noqa: RUF009  (a Secret is immutable, like a str)
        "KAFKA_SASL_PASSWORD",
        Secret(),
        "SASL password (from the environment only; never shown in a repr or a log line)",
        secret=True,
    )
    ssl_cafile: str = env_field(
        "KAFKA_SSL_CAFILE", "", "CA bundle for SSL/SASL_SSL; empty: system CAs"
    )
    replication_factor: int = env_field(
        "KAFKA_TOPIC_REPLICATION_FACTOR", 1, "Replication of the topics the service creates"
    )
    fetch_max_bytes: int = env_field(
        "GMM_FETCH_MAX_BYTES",
        4 * 1024 * 1024,
        "Most bytes one fetch of a consumer asks the broker for, all partitions together (the "
        "broker still returns a first record batch larger than this, so that no record stalls)",
    )
    fetch_partition_max_bytes: int = env_field(
        "GMM_FETCH_PARTITION_MAX_BYTES",
        1024 * 1024,
        "Most bytes one fetch asks for from one partition (same exception as GMM_FETCH_MAX_BYTES)",
    )
    fetch_decompressed_max_bytes: int = env_field(
        "GMM_FETCH_DECOMPRESSED_MAX_BYTES",
        16 * 1024 * 1024,
        "Most bytes a compressed record batch may inflate to; a larger one (a compression bomb) "
        "is read as one undecodable record: dead-lettered by the worker, counted by the trainer",
    )
    output_compression: str = env_field(
        "GMM_OUTPUT_COMPRESSION",
        "zstd",
        "Compression of the record batches this process writes (every codec is read whatever "
        "this says); zstd: the worker's throughput of none at 0.12x the bytes "
        "(bench/results/codecs.md)",
        choices=COMPRESSIONS,
    )
    output_zstd_level: int = env_field(
        "GMM_OUTPUT_ZSTD_LEVEL",
        1,
        "zstd level (1-19) of the record batches this process writes when "
        "GMM_OUTPUT_COMPRESSION=zstd; 1: the JSON assignments at 0.7x level 3's CPU and no "
        "more bytes (kafka_common/zstd_level.py)",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.sasl_password, Secret):  # KafkaSettings(sasl_password="...")
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))

    def validate(self) -> None:
        if not self.servers:
            raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is empty")
        for server in self.servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS entry {server!r} is not host:port")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME"
            )
        if "SSL" in self.security_protocol and self.ssl_cafile:
            try:
                self.ssl_context()
            except ssl.SSLError:
                raise SettingsError(
                    f"KAFKA_SSL_CAFILE={self.ssl_cafile!r} holds no PEM CA certificate"
                ) from None
            except OSError as exc:
                raise SettingsError(
                    f"KAFKA_SSL_CAFILE={self.ssl_cafile!r} cannot be read: {exc.strerror}"
                ) from None
        for name, value in (
            ("GMM_FETCH_MAX_BYTES", self.fetch_max_bytes),
            ("GMM_FETCH_PARTITION_MAX_BYTES", self.fetch_partition_max_bytes),
            ("GMM_FETCH_DECOMPRESSED_MAX_BYTES", self.fetch_decompressed_max_bytes),
        ):
            if not 1024 <= value <= _INT32_MAX:  # the fetch request's fields are int32
                raise SettingsError(f"{name} must be between 1024 and {_INT32_MAX}, got {value}")
        if not 1 <= self.output_zstd_level <= 19:
            raise SettingsError(
                f"GMM_OUTPUT_ZSTD_LEVEL must be between 1 and 19, got {self.output_zstd_level}"
            )
        if self.fetch_max_bytes < self.fetch_partition_max_bytes:
            raise SettingsError(
                f"GMM_FETCH_MAX_BYTES ({self.fetch_max_bytes}) must be >= "
                f"GMM_FETCH_PARTITION_MAX_BYTES ({self.fetch_partition_max_bytes})"
            )

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.security_protocol:
            return None
        return ssl.create_default_context(cafile=self.ssl_cafile or None)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka producers, consumers and admin clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.reveal(),
            )
        context = self.ssl_context()
        if context is not None:
            opts["ssl_context"] = context
        return opts

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka consumer of the project: committed records only
        (an aborted transaction's records are never read) and fetches bounded in bytes. Every
        record batch the broker accepted is read, or stood in for (`record_batches`), and its
        records are built a batch at a time (`fetched_records`)."""
        from kafka_common import fetched_records, record_batches

        record_batches.install(self.fetch_decompressed_max_bytes)
        fetched_records.install()
        return {
            **self.client_options(),
            "isolation_level": "read_committed",
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.fetch_partition_max_bytes,
        }

    def producer_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka producer of the project (its codec); zstd
        batches are compressed at GMM_OUTPUT_ZSTD_LEVEL (`zstd_level`)."""
        from kafka_common import zstd_level

        codec = self.output_compression
        if codec == "zstd":
            zstd_level.install(self.output_zstd_level)
        return {**self.client_options(), "compression_type": None if codec == "none" else codec}
