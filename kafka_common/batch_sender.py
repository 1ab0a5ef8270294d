"""Sending many records as whole record batches per partition, and sending them at a rate.

`AIOKafkaProducer.send` costs tens of microseconds of Python per record. A micro-batch of
outputs, or a load generator's tick of records, is already a batch, so it is cut into aiokafka
record batches per partition instead (about a microsecond per record). Keyed records land where
the default partitioner (murmur2, as the Java client) puts them, so per-key order holds; unkeyed
ones are spread over the partitions.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

Record = tuple[bytes | None, bytes]  # (key, value)
#: Anything whose first two items are the key and the value (a Record, the worker's Outgoing).
R = TypeVar("R", bound=tuple[Any, ...])


async def send_in_batches(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Sequence[R],
    sent: list[tuple[asyncio.Future, list[R]]],
    alone: bool = False,
) -> None:
    """Queues `records` (key first, value second) on one partition as full record batches,
    appending (future, its records) to `sent` as each batch is handed to the producer.

    If the producer raises midway, `sent` still holds what was queued: the caller knows which
    records have a future and which do not. `alone`: one record per batch (so that a record the
    broker refuses cannot fail others).
    """
    batch, members = producer.create_batch(), list[R]()
    for record in records:
        if members and (
            alone or batch.append(key=record[0], value=record[1], timestamp=None) is None
        ):  # full (or one record per batch): send it, start the next
            batch.close()
            sent.append((await producer.send_batch(batch, topic, partition=partition), members))
            batch, members = producer.create_batch(), []
        if not members:  # an empty batch takes any one record
            batch.append(key=record[0], value=record[1], timestamp=None)
        members.append(record)
    batch.close()
    sent.append((await producer.send_batch(batch, topic, partition=partition), members))


class BatchSender:
    """Sends lists of records through `producer` as per-partition record batches.

    With `by_key=False` records are spread over the partitions whatever their key: for load
    generators with unique keys, where no key needs a fixed partition (aiokafka's murmur2 is
    pure Python, about 15 us a key).
    """

    def __init__(self, producer: AIOKafkaProducer, by_key: bool = True) -> None:
        self.producer = producer
        self.by_key = by_key
        self._partitioner = DefaultPartitioner()
        self._spread = itertools.count()

    async def send(
        self,
        topic: str,
        records: Sequence[Record],
        partitions: Sequence[int] | None = None,
    ) -> list[asyncio.Future]:
        """Queues the records; returns the futures that resolve once the broker has them.

        `partitions`, one per record, places each record on that partition (modulo the topic's
        partition count) instead of partitioning by key.
        """
        if not records:
            return []
        producer = self.producer
        available = sorted(await producer.partitions_for(topic))
        n = len(available)
        by_partition: dict[int, list[Record]] = collections.defaultdict(list)
        if partitions is not None:
            for record, p in zip(records, partitions, strict=True):
                by_partition[available[p % n]].append(record)
        else:
            for record in records:
                key = record[0]
                if key is None or not self.by_key:
                    p = available[next(self._spread) % n]
                else:
                    p = self._partitioner(key, available, available)
                by_partition[p].append(record)
        sent: list[tuple[asyncio.Future, list[Record]]] = []
        for partition, items in by_partition.items():
            await send_in_batches(producer, topic, partition, items, sent)
        return [future for future, _ in sent]


async def send_paced(
    sender: BatchSender,
    topic: str,
    records: Iterable[Record],
    rate: float = 0.0,
    tick_s: float = 0.002,
    max_pending: int = 20_000,
) -> int:
    """Sends `records` at `rate` records/s (0: as fast as possible); returns how many were sent.

    Each tick sends the records that have fallen due, so the load is smooth at the scale of a
    tick, and a record's Kafka timestamp is the time it was due (give or take a tick).
    """
    source = iter(records)
    sent, t0 = 0, time.perf_counter()
    pending: list[asyncio.Future] = []
    in_pending = 0
    while True:
        if rate > 0:
            due = int((time.perf_counter() - t0) * rate) + 1 - sent
            chunk = list(itertools.islice(source, max(0, min(due, max_pending))))
        else:
            chunk = list(itertools.islice(source, 4096))
        if chunk:
            pending += await sender.send(topic, chunk)
            sent += len(chunk)
            in_pending += len(chunk)
            if in_pending >= max_pending:
                await asyncio.gather(*pending)
                pending, in_pending = [], 0
        elif rate <= 0 or due > 0:
            break  # the source is exhausted
        if rate > 0:
            wait = (sent + 1) / rate - (time.perf_counter() - t0)
            await asyncio.sleep(max(wait, tick_s))
    await asyncio.gather(*pending)
    return sent
