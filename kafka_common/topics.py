"""Creating the service's topics, idempotently, with the right settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from kafka_common.settings import KafkaSettings

log = logging.getLogger(__name__)


class TopicSpec(NamedTuple):
    name: str
    partitions: int = 1
    compact: bool = False
    #: Neither deleted by age nor by size (the models' history).
    retain_forever: bool = False
    #: A compacted topic's min.compaction.lag.ms (None: the broker's, 0).
    compaction_lag_ms: int | None = None

    @property
    def configs(self) -> dict[str, str]:
        out = {"cleanup.policy": "compact"} if self.compact else {}
        if self.compact and self.compaction_lag_ms is not None:
            out["min.compaction.lag.ms"] = str(self.compaction_lag_ms)
        if self.retain_forever:
            out.update({"retention.ms": "-1", "retention.bytes": "-1"})
        return out


async def ensure_topics(kafka: KafkaSettings, specs: list[TopicSpec]) -> list[str]:
    """Creates the topics that do not exist yet; returns the names it created."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions,
                replication_factor=kafka.replication_factor,
                topic_configs=s.configs,
            )
            for s in missing
        ]
        with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
            response = await admin.create_topics(new)
            _check_created(kafka, response)
        log.info("created topics %s", [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


_REFUSED = (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno)


def _check_created(kafka: KafkaSettings, response: Any) -> None:
    """aiokafka returns per-topic errors rather than raising them. A topic this principal may
    not describe is missing from list_topics whether or not it exists, so creating it is the
    first request the broker's ACLs refuse: say so, not "topic does not exist" later."""
    for topic, error_code, *_ in response.topic_errors:
        if error_code in (
            TopicAuthorizationFailedError.errno,
            ClusterAuthorizationFailedError.errno,
        ):
            from kafka_common.access import NotAuthorized

            who = f"user {kafka.sasl_username!r}" if kafka.sasl_username else "this client"
            raise NotAuthorized(
                f"not authorized: {who} may neither describe nor create topic {topic!r}; the "
                "broker's ACLs must allow it the topic's operations (or Create, to create it)"
            )
        if error_code and error_code != TopicAlreadyExistsError.errno:
            log.warning("creating topic %r: error %d (%s)", topic, error_code, _[0] if _ else "")


async def assigned_consumer(
    kafka: KafkaSettings, topic: str, **options: Any
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started, group-less consumer assigned every partition of `topic` (LookupError if the
    topic does not exist); positions are left to the caller. Committed records only, fetches
    bounded in bytes (`KafkaSettings.consumer_options`)."""
    consumer = AIOKafkaConsumer(
        **kafka.consumer_options(), enable_auto_commit=False, group_id=None, **options
    )
    await consumer.start()
    # aiokafka#647: a consumer stopped before its no-group task first ran raises CancelledError.
    await asyncio.sleep(0)
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise LookupError(f"topic {topic!r} does not exist")
        consumer.assign(tps)
        return consumer, tps
    except BaseException:
        await consumer.stop()
        raise


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, wait_s: float = 5.0
) -> list[TopicPartition]:
    """The topic's partitions, refreshing metadata until they are known; [] if it has none.

    Looked up again as soon as a refresh returns (a topic that exists is known after the
    first); the pause is only between refreshes that did not tell (a topic being created)."""
    for attempt in range(max(1, int(wait_s / 0.1))):
        if attempt:
            await asyncio.sleep(0.1)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
    return []
