"""Checking the connection before any client starts, and one-line descriptions of Kafka errors.

aiokafka clients log an authentication failure and then raise a generic "unable to bootstrap"
error; `check_connection` opens one connection itself (with the SASL handshake), so a wrong
password and an unreachable broker are told apart, in one line, before anything else starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

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
            except (TimeoutError, OSError, KafkaError) as exc:
                last = exc
    raise KafkaUnavailable(f"cannot reach Kafka at {kafka.bootstrap_servers}: {_reason(last)}")


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
    if isinstance(exc, KafkaConnectionError | OSError | asyncio.TimeoutError):
        return f"cannot reach Kafka at {bootstrap}: {_reason(exc)}"
    return f"Kafka error at {bootstrap}: {type(exc).__name__}: {_reason(exc)}"
