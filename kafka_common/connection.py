"""Checking the connection before any client starts, and one-line descriptions of Kafka errors.

aiokafka clients log an authentication failure and then raise a generic "unable to bootstrap"
error; `check_connection` opens one connection itself (with the TLS and SASL handshakes), so a
wrong password, a broker certificate the CA did not sign and an unreachable broker are told
apart, in one line, before anything else starts. `describe_kafka_error` does the same for what
fails later, an authorization error (a missing ACL) included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator

from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from kafka_common.settings import KafkaSettings


class KafkaUnavailable(Exception):
    """The broker cannot be used: unreachable, or it refused our credentials."""


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    # aiokafka logs each failed attempt itself; the exception below says it once, better.
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


async def check_connection(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Connects (and authenticates) to a bootstrap server; raises KafkaUnavailable otherwise."""
    opts = kafka.client_options()
    opts.pop("bootstrap_servers")
    last: BaseException | None = None
    with _quiet("aiokafka"):
        for server in kafka.servers:
            host, _, port = server.rpartition(":")
            try:
                conn = await asyncio.wait_for(
                    create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **opts),
                    timeout_s,
                )
                conn.close()
                return
            except SaslAuthenticationFailed as exc:
                raise KafkaUnavailable(
                    f"authentication failed at {server} for user {kafka.sasl_username!r} "
                    f"({kafka.sasl_mechanism}): {_reason(exc)}"
                ) from None
            except ssl.SSLError as exc:
                # The broker answered, but its certificate (or TLS itself) was refused: trying
                # the other servers would only repeat it.
                raise KafkaUnavailable(_tls_failure(server, kafka, exc)) from None
            except (TimeoutError, OSError, KafkaError) as exc:
                last = exc
    raise KafkaUnavailable(f"cannot reach Kafka at {kafka.bootstrap_servers}: {_reason(last)}")


def _tls_failure(server: str, kafka: KafkaSettings, exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (
            f"KAFKA_SSL_CAFILE={kafka.ssl_cafile}"
            if kafka.ssl_cafile
            else "the system CAs (KAFKA_SSL_CAFILE is empty)"
        )
        return (
            f"TLS handshake with {server} failed: the broker's certificate is not trusted "
            f"({exc.verify_message}); {trusted} must hold the CA that signed it"
        )
    return f"TLS handshake with {server} failed: {exc.reason or exc}"


#: Authorization errors aiokafka raises, and what the principal was refused.
_REFUSED: tuple[tuple[type[KafkaError], str], ...] = (
    (TopicAuthorizationFailedError, "topic"),
    (GroupAuthorizationFailedError, "consumer group"),
    (TransactionalIdAuthorizationFailed, "transactional id"),
    (ClusterAuthorizationFailedError, "cluster operation"),
)


def _refused(exc: BaseException, bootstrap: str) -> str | None:
    """One line for an authorization error (the broker's ACLs refused us), else None."""
    for cls, what in _REFUSED:
        if isinstance(exc, cls):
            return (
                f"not authorized at {bootstrap}: the broker's ACLs refused this principal "
                f"access to {what}{_names(exc)} ({type(exc).__name__})"
            )
    return None


def _names(exc: BaseException) -> str:
    """aiokafka gives an authorization error the topics, group or transactional id refused
    (a name or a collection of names), or else a message."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, set | frozenset | list | tuple):
        return " " + ", ".join(repr(str(name)) for name in sorted(arg, key=str))
    if isinstance(arg, str) and arg:
        return f": {arg}" if " " in arg else f" {arg!r}"
    return ""


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no bootstrap server"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text


def describe_kafka_error(exc: BaseException, bootstrap: str) -> str:
    """One line for a Kafka error that happened after the connection check."""
    if isinstance(exc, KafkaUnavailable):
        return str(exc)
    if isinstance(exc, SaslAuthenticationFailed):
        return f"authentication failed at {bootstrap}: {_reason(exc)}"
    refused = _refused(exc, bootstrap)
    if refused is not None:
        return refused
    if isinstance(exc, KafkaConnectionError | OSError | asyncio.TimeoutError):
        return f"cannot reach Kafka at {bootstrap}: {_reason(exc)}"
    return f"Kafka error at {bootstrap}: {type(exc).__name__}: {_reason(exc)}"
