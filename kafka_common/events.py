"""The events topic's Kafka side: sending events, one producer per sender.

The record itself (fields, validation, JSON encoding) is `wire.event`; the trainer reads the
topic in `trainer.events`.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from kafka_common.settings import KafkaSettings
from wire.event import Event

DEFAULT_EVENTS_TOPIC = "gmm.events"


class EventProducer:
    """Sends events to the events topic (key: the model name); started on the first send."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def send(self, event: Event) -> None:
        """Sends one event and waits for the broker's acknowledgement."""
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(**self.kafka.producer_options(), acks="all")
                await producer.start()
                self._producer = producer
        await self._producer.send_and_wait(self.topic, event.dumps(), key=event.key)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def send_event(kafka: KafkaSettings, topic: str, event: Event) -> None:
    """Sends one event with a producer of its own (for the rare sender: the trainer)."""
    producer = EventProducer(kafka, topic)
    try:
        await producer.send(event)
    finally:
        await producer.stop()
