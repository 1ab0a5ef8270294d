"""The compacted params topic: every worker reads every model, independent of consumer groups.

Models are published with key = model name and value = ModelParams JSON. Readers assign all
partitions manually (no group), start a little before the end so they find the newest valid
model even if the very last record is poisoned, and then follow the topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kafka_common.settings import KafkaSettings
from kafka_common.topics import topic_partitions
from mixture.params import ModelParams, ParamsError

log = logging.getLogger(__name__)

#: How many records before the end of each partition a reader starts from.
LOOKBACK = 20

OnModel = Callable[[ModelParams], Awaitable[object]]
OnReject = Callable[[str, str], None]  # (reason code, message)


async def _start_consumer(
    kafka: KafkaSettings, topic: str
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    # aiokafka#647: a consumer stopped before its no-group task first ran raises CancelledError.
    await asyncio.sleep(0)
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise LookupError(f"params topic {topic!r} does not exist")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - LOOKBACK))
        return consumer, tps
    except BaseException:
        await consumer.stop()
        raise


async def _behind(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False


async def _catch_up(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], on_reject: OnReject | None
) -> ModelParams | None:
    """Reads to the current end of every partition; returns the highest-version valid model."""
    ends = await consumer.end_offsets(tps)
    newest: ModelParams | None = None
    while await _behind(consumer, tps, ends):
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            for record in records:
                model = _decode(record.value, on_reject)
                if model is not None and (newest is None or model.version > newest.version):
                    newest = model
    return newest


async def read_newest(
    kafka: KafkaSettings, topic: str, on_reject: OnReject | None = None
) -> ModelParams | None:
    """The newest valid model on the topic (highest version), or None if there is none."""
    consumer, tps = await _start_consumer(kafka, topic)
    try:
        return await _catch_up(consumer, tps, on_reject)
    finally:
        await consumer.stop()


def _decode(value: bytes | None, on_reject: OnReject | None) -> ModelParams | None:
    if value is None:  # a tombstone
        return None
    try:
        return ModelParams.loads(value)
    except ParamsError as exc:
        log.warning("ignoring invalid parameters record: %s", exc)
        if on_reject is not None:
            on_reject(exc.reason, str(exc))
        return None


async def follow(
    kafka: KafkaSettings,
    topic: str,
    on_model: OnModel,
    on_reject: OnReject | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Calls on_model for each valid model: first the newest existing one, then each new one.

    Models older than the newest seen so far are skipped (versions only increase).
    """
    consumer, tps = await _start_consumer(kafka, topic)
    try:
        # Catch up first, so a worker starts with the newest model rather than replaying.
        newest = await _catch_up(consumer, tps, on_reject)
        if newest is not None:
            await on_model(newest)
        while stop is None or not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    model = _decode(record.value, on_reject)
                    if model is None:
                        continue
                    if newest is not None and model.version <= newest.version:
                        log.warning(
                            "ignoring model version %d: not newer than %d",
                            model.version,
                            newest.version,
                        )
                        continue
                    newest = model
                    await on_model(model)
    finally:
        await consumer.stop()


async def publish(kafka: KafkaSettings, topic: str, model: ModelParams, model_name: str) -> None:
    """Publishes one model (key = model name) and waits until the broker has it."""
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, model.dumps().encode(), key=model_name.encode())
    finally:
        await producer.stop()
