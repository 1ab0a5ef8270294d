"""Delivering a micro-batch's outputs: assignments and dead letters, as record batches.

An output goes to the partition its input came from (modulo the partition count), as Kafka
Streams does for co-partitioned topics: with as many output as input partitions (the default),
per-key order follows the input's partitioning, whichever partitioner its producer used.

The producer is idempotent with acks=all: a batch resent after a failure cannot duplicate within
the producer's session, and an output counts as delivered only once every in-sync replica has it.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from kafka_common.batch_sender import BatchSender
from kafka_common.settings import KafkaSettings
from stream_app.batch import BatchOutcome

#: Largest record batch; the broker accepts up to 1 MiB by default.
MAX_BATCH_BYTES = 512 * 1024


class Delivery:
    """The worker's producer for assignments and dead letters."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.producer: AIOKafkaProducer | None = None
        self._sender: BatchSender | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            **self.kafka.client_options(),
            acks="all",
            enable_idempotence=True,
            max_batch_size=MAX_BATCH_BYTES,
            linger_ms=0,
        )
        await self.producer.start()
        self._sender = BatchSender(self.producer)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
            self._sender = None

    async def send_outcome(
        self, outcome: BatchOutcome, output_topic: str, dlq_topic: str
    ) -> list[asyncio.Future]:
        """Queues a batch's assignments and dead letters; the futures resolve when delivered."""
        sender = self._sender
        if sender is None:
            raise RuntimeError("Delivery.start() was not called")
        futures = []
        for topic, outs in ((output_topic, outcome.assignments), (dlq_topic, outcome.dead_letters)):
            records = [(o.key, o.value) for o in outs]
            futures += await sender.send(topic, records, [o.partition for o in outs])
        return futures
