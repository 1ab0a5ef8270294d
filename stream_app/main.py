"""`gmm-worker`: starts the stream worker (the Faust app in stream_app.app).

Before Faust starts, settings are validated (GMM_PARAMS_FILE included), the broker's ACLs checked
for what the worker needs, and the service's topics created (the params topic compacted), so a
bad setting, an unreachable broker, a rejected login or a missing ACL is one clear line and a
non-zero exit rather than a retry loop or a traceback. `--help` and `--version` touch nothing:
no environment, no network.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sys
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from kafka_common import params_topic
from kafka_common.access import Need, check_access
from kafka_common.connection import KafkaUnavailable, check_connection, describe_kafka_error
from kafka_common.jax_cache import enable_compilation_cache
from kafka_common.settings import SettingsError
from kafka_common.topics import TopicSpec, ensure_topics
from stream_app.settings import WorkerSettings

PROG = "gmm-worker"


def topic_specs(settings: WorkerSettings) -> list[TopicSpec]:
    return [
        TopicSpec(settings.input_topic, settings.input_partitions),
        TopicSpec(settings.output_topic, settings.input_partitions),
        TopicSpec(settings.dlq_topic, 1),
        params_topic.params_spec(settings.params_topic),
        *([TopicSpec(settings.events_topic, 1)] if settings.events_topic else []),
    ]


def access_needs(settings: WorkerSettings) -> list[Need]:
    """What the broker's ACLs must allow the worker (docs/security.md)."""
    return [
        Need("topic", settings.input_topic, "read", "GMM_INPUT_TOPIC"),
        Need("topic", settings.params_topic, "read", "GMM_PARAMS_TOPIC"),
        Need("topic", settings.output_topic, "write", "GMM_OUTPUT_TOPIC"),
        Need("topic", settings.dlq_topic, "write", "GMM_DLQ_TOPIC"),
        Need("group", settings.group_id, "read", "GMM_CONSUMER_GROUP"),
        Need("group", f"{settings.group_id}-app", "read", "GMM_CONSUMER_GROUP + '-app'"),
        *(
            [Need("topic", settings.events_topic, "write", "GMM_EVENTS_TOPIC")]
            if settings.events_topic
            else []
        ),
    ]


def prepare(settings: WorkerSettings) -> str | None:
    """Checks the connection and the ACLs, creates the topics; returns a one-line error, or
    None."""

    async def connect_and_create() -> None:
        await check_connection(settings.kafka)
        await check_access(settings.kafka, access_needs(settings))
        await asyncio.wait_for(ensure_topics(settings.kafka, topic_specs(settings)), 60)

    try:
        asyncio.run(connect_and_create())
    except (KafkaUnavailable, TimeoutError, KafkaError, OSError) as exc:
        return describe_kafka_error(exc, settings.kafka.bootstrap_servers)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The stream worker: classifies the input topic's points into the "
        "assignments topic. Configured by environment variables (see docs/configuration.md); other "
        "arguments are passed to `faust worker`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    enable_compilation_cache(settings.jax_cache_dir)  # before anything is compiled
    error = prepare(settings)
    if error is not None:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    from stream_app.app import create_app

    app = create_app(settings)
    sys.argv = [PROG, "worker", "--loglevel", settings.log_level, *rest]
    try:
        app.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    return app.worker.exit_code or code  # type: ignore[attr-defined]


def _version() -> str:
    try:
        return importlib.metadata.version("gmm-stream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
