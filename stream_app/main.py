"""`gmm-worker`: starts the stream worker (the Faust app in stream_app.app).

Before Faust starts, settings are validated and the service's topics created (the params topic
compacted), so a bad setting, an unreachable broker or a rejected login is one clear line and
a non-zero exit rather than a retry loop or a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from kafka_common.connection import KafkaUnavailable, check_connection, describe_kafka_error
from kafka_common.settings import SettingsError
from kafka_common.topics import TopicSpec, ensure_topics
from stream_app.settings import WorkerSettings

PROG = "gmm-worker"


def topic_specs(settings: WorkerSettings) -> list[TopicSpec]:
    return [
        TopicSpec(settings.input_topic, settings.input_partitions),
        TopicSpec(settings.output_topic, settings.input_partitions),
        TopicSpec(settings.dlq_topic, 1),
        TopicSpec(settings.params_topic, 1, compact=True),
    ]


def prepare(settings: WorkerSettings) -> str | None:
    """Checks the connection and creates the topics; returns a one-line error, or None."""

    async def connect_and_create() -> None:
        await check_connection(settings.kafka)
        await asyncio.wait_for(ensure_topics(settings.kafka, topic_specs(settings)), 60)

    try:
        asyncio.run(connect_and_create())
    except (KafkaUnavailable, TimeoutError, KafkaError, OSError) as exc:
        return describe_kafka_error(exc, settings.kafka.bootstrap_servers)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    error = prepare(settings)
    if error is not None:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    from stream_app.app import app

    sys.argv = [PROG, "worker", "--loglevel", settings.log_level, *args]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
