"""The events topic's Kafka side: sending events, one producer per sender.

The record itself (fields, validation, JSON encoding) is `wire.event`; the trainer reads the
topic in `trainer.events`. A sender given an `EventSigner` (a worker with
GMM_EVENTS_SIGNING_KEY) signs every record it sends (`kafka_common.event_signing`).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from kafka_common.event_signing import EventSigner
from kafka_common.settings import KafkaSettings
from wire.event import Event

DEFAULT_EVENTS_TOPIC = "gmm.events"


class EventProducer:
    """Sends events to the events topic (key: the model name); started on the first send.
    With `signer`, each record carries its signature in a header; without, it goes unsigned."""

    def __init__(self, kafka: KafkaSettings, topic: str, signer: EventSigner | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        self.signer = signer
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def send(self, event: Event) -> None:
        """Sends one event and waits for the broker's acknowledgement."""
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(**self.kafka.producer_options(), acks="all")
                await producer.start()
                self._producer = producer
        value, key = event.dumps(), event.key
        headers = self.signer.headers(key, value) if self.signer is not None else None
        await self._producer.send_and_wait(self.topic, value, key=key, headers=headers)

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
