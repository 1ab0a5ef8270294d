"""The input topic, read in micro-batches by one aiokafka consumer in the workers' group.

Why not Faust's own topic stream: Faust turns every Kafka record into a Message, an Event and a
trip through a stream queue, then acks each one; on this service's records (~40 bytes) that
per-record path, not the model, bounded a worker at 0.2x a raw aiokafka pipe (see
bench/results/stream.md). Here a micro-batch is one `getmany` call: records stay aiokafka's
ConsumerRecords, and a batch becomes one event on the agent's channel (stream_app.agents).

Micro-batching follows Triton's dynamic batcher: a batch closes when it holds `max_batch`
records or `max_batch_bytes` of keys and values, or `max_delay` after its first record arrived
(on a topic stamped with LogAppendTime, counted from the broker's append, the fetch's share at
most half of it), whichever comes first. Records fetched past a full batch are carried to the
next one (never fetched twice); a rebalance drops them, as it drops a partial batch, since the
consumer then reads on from the committed offsets. With the consumer's fetches bounded in bytes
(`KafkaSettings.consumer_options`), the records a worker holds are bounded in bytes too.

A key longer than `max_key_bytes` is cut here, before the batch holds it (`records.cut_key`).

What may be committed, and when, is the Checkpoint's business (stream_app.checkpoint): this
class only fetches, commits what it is given, and tells the checkpoint (`on_revoke`) before a
rebalance takes partitions away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from itertools import repeat
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from kafka_common.fetched_records import FIELD
from kafka_common.record_batches import undecodable_reason
from kafka_common.settings import KafkaSettings
from stream_app.metrics import WorkerMetrics
from stream_app.records import InRecord, cut_key

log = logging.getLogger(__name__)

#: ConsumerRecord.timestamp_type of a record stamped by the broker (the topic's
#: message.timestamp.type=LogAppendTime); 0 is the producer's CreateTime.
LOG_APPEND_TIME = 1

#: How often the lag gauges are refreshed from the broker.
LAG_INTERVAL_S = 5.0

#: How long an idle poll waits before looking again (it returns as soon as a record arrives).
IDLE_POLL_S = 0.5


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (about 2x faster)


def _seconds(stamps: list[int | None]) -> list[float | None]:
    """Broker timestamps (ms) in seconds; None where a record has none (-1)."""
    if None not in stamps and min(stamps, default=0) >= 0:  # type: ignore[type-var,operator]
        return [t / 1000 for t in stamps]  # type: ignore[operator]
    return [t / 1000 if t is not None and t >= 0 else None for t in stamps]


def in_records(items: list[ConsumerRecord], max_key_bytes: int) -> list[InRecord]:
    """The batch's view of consumed records; a key over `max_key_bytes` is cut (`cut_key`),
    a stand-in for unreadable records says so (`undecodable`)."""
    n = len(items)
    rows = zip(
        map(FIELD["key"], items),
        map(FIELD["value"], items),
        map(FIELD["topic"], items),
        map(FIELD["partition"], items),
        map(FIELD["offset"], items),
        _seconds(list(map(FIELD["timestamp"], items))),
        repeat(None, n),
        repeat(None, n),
        strict=True,
    )
    out = list(map(_new, repeat(InRecord, n), rows))  # C loops: no Python frame per record
    if max(map(_key_size, items)) > max_key_bytes:
        for i, r in enumerate(out):
            if r.key is not None and len(r.key) > max_key_bytes:
                key, cut = cut_key(r.key, max_key_bytes)
                out[i] = r._replace(key=key, key_cut=cut)
    if min(map(_value_size, items)) < 0:  # null values: tombstones, stand-ins
        for i, r in enumerate(items):
            if (reason := undecodable_reason(r)) is not None:
                out[i] = out[i]._replace(undecodable=reason)
    return out


_key_size = FIELD["serialized_key_size"]
_value_size = FIELD["serialized_value_size"]


def _record_bytes(r: ConsumerRecord) -> int:
    """What a record counts in a batch's bytes: its key's and value's, and 2 (a null key or
    value has size -1: the 2 keep every record's count positive)."""
    return r.serialized_key_size + r.serialized_value_size + 2


def fitting(items: list[ConsumerRecord], room: int, size: int, max_bytes: int) -> tuple[int, int]:
    """How many of `items` (at most `room`) a batch of `size` bytes takes without passing
    `max_bytes`, and its size then. An empty batch takes one record of any size."""
    n = min(len(items), room)
    head = items if n == len(items) else items[:n]
    total = sum(map(_key_size, head)) + sum(map(_value_size, head)) + 2 * n  # in C loops
    if size + total <= max_bytes:
        return n, size + total
    sizes = [_record_bytes(r) for r in head]
    for i, b in enumerate(sizes):
        if size + b > max_bytes and (size > 0 or i > 0):
            return i, size
        size += b
    return n, size


class InBatch(NamedTuple):
    """One micro-batch of input records, and the offsets to commit once it is delivered.

    `number` counts batches in fetch order from 0 (the Checkpoint relies on it)."""

    number: int
    records: list[InRecord]
    offsets: dict[TopicPartition, int]  # next offset to read, per partition


class PointSource(ConsumerRebalanceListener):
    """Fetches micro-batches of the input topic; commits offsets; reports lag."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        max_batch: int,
        max_delay_s: float,
        session_timeout_s: float,
        metrics: WorkerMetrics | None = None,
        rebalance_timeout_s: float = 60.0,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_key_bytes: int = 4096,
    ) -> None:
        self.kafka = kafka
        self.metrics = metrics
        self.topic = topic
        self.group_id = group_id
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_key_bytes = max_key_bytes
        self.max_delay_s = max_delay_s
        self.session_timeout_s = session_timeout_s
        self.rebalance_timeout_s = rebalance_timeout_s
        self.consumer: AIOKafkaConsumer | None = None
        #: Awaited before a rebalance gives up partitions (the checkpoint settles them).
        self.on_revoke: Callable[[list[TopicPartition]], Awaitable[None]] | None = None
        self._fetched = 0  # batches handed out
        self._generation = 0  # rebalances begun
        self._committed: dict[TopicPartition, int] = {}  # as known to this worker
        #: Records fetched past the last full batch, in fetch order: the next batch's first.
        self._carry: list[tuple[TopicPartition, list[ConsumerRecord]]] = []

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            # Committed records only (an aborted transaction's are skipped by the broker's
            # markers), fetches bounded in bytes; every codec is read (cramjam).
            **self.kafka.consumer_options(),
            group_id=self.group_id,
            client_id=f"{self.group_id}-points",
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # points sent before any worker ran are classified
            session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, self.session_timeout_s / 3) * 1000),
            # How long the group waits for this member to settle and commit before it gives
            # up partitions (Checkpoint.revoke); past it the member is dropped from the group.
            rebalance_timeout_ms=int(self.rebalance_timeout_s * 1000),
            # A fetch returns as soon as it has data; this caps how long an idle one is held
            # at the broker, so the batch deadline is never overrun by a fetch in flight.
            fetch_max_wait_ms=5,
        )
        self.consumer.subscribe([self.topic], listener=self)
        await self.consumer.start()

    async def stop(self) -> None:
        """Leaves the group (commit first: see Checkpoint.stop)."""
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.stop()

    def assignment(self) -> set[TopicPartition]:
        return set() if self.consumer is None else set(self.consumer.assignment())

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self.consumer
        if consumer is None:
            raise KafkaError("the input consumer is stopped")
        await consumer.commit(dict(offsets))
        self._committed.update(offsets)
        if self.metrics is not None:
            for tp, offset in offsets.items():
                self.metrics.input_committed_offset.labels(partition=str(tp.partition)).set(offset)

    async def next_batch(self) -> InBatch:
        """Waits for a record, then fills a batch until it is full (in records or bytes) or its
        delay has passed."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        records: list[InRecord] = []
        offsets: dict[TopicPartition, int] = {}
        deadline: float | None = None
        appended = math.inf  # the batch's oldest broker append time (ms), if its topic has them
        size = 0  # bytes of keys and values in the batch
        while len(records) < self.max_batch:
            if self._carry:
                fetched, self._carry = self._carry, []
            else:
                generation = self._generation
                timeout = IDLE_POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
                got = await consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.max_batch - len(records)
                )
                if self._generation != generation and records:
                    # A rebalance while filling: the consumer reads on from the committed
                    # offsets, so what the batch held is read again (here or by the
                    # partition's new owner).
                    log.info("dropping a partial batch of %d records at a rebalance", len(records))
                    records, offsets, deadline, size = [], {}, None, 0
                    appended = math.inf
                fetched = list(got.items())
            for n, (tp, items) in enumerate(fetched):
                room = self.max_batch - len(records)
                take, size = fitting(items, room, size, self.max_batch_bytes)
                if take:
                    first = items[0]
                    if (
                        deadline is None
                        and first.timestamp_type == LOG_APPEND_TIME
                        and first.timestamp >= 0
                    ):
                        appended = min(appended, first.timestamp)
                    records.extend(in_records(items[:take], self.max_key_bytes))
                    offsets[tp] = items[take - 1].offset + 1
                if take < len(items):  # the batch is full: the rest starts the next one
                    self._carry = [(tp, items[take:]), *fetched[n + 1 :]]
                    break
            if self._carry:
                break
            if deadline is None:
                if not records:
                    continue
                deadline = time.monotonic() + self.max_delay_s - self._waited(appended)
            if time.monotonic() >= deadline:
                break
        number = self._fetched
        self._fetched += 1
        return InBatch(number, records, offsets)

    def _waited(self, appended_ms: float) -> float:
        """How long the batch's first record has already waited since the broker appended it
        (0 without a broker append time), at most half the batch's delay.

        Latency is seen from the input's append time (a topic with LogAppendTime stamps it), so
        the batch's delay runs from there too: the fetch's own delay (a few ms) no longer adds
        to it. A producer's CreateTime is never used: it may be event time, hours old. The cap
        keeps batching alive when the append time misleads: a worker clock ahead of the
        broker's, or records already late (a consumer behind, a transaction committed late)
        would otherwise close every batch at its first fetch; at worst a batch now waits half
        its delay. A clock behind the broker's changes nothing."""
        if appended_ms == math.inf:
            return 0.0
        return min(max(0.0, time.time() - appended_ms / 1000), self.max_delay_s / 2)

    async def watch_lag(self, interval_s: float = LAG_INTERVAL_S) -> None:
        """Refreshes the lag gauges on a timer, so a stalled stream shows a growing lag."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.update_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: the next tick tries again
                log.debug("lag update failed: %s", exc)

    async def update_lag(self) -> None:
        """Sets each owned partition's lag: end offset - committed offset (records not yet
        committed), and the offsets behind an open transaction. Runs on a timer, so the
        gauges move while the stream is stalled too.

        The end offset is the last stable one (read_committed): records of an open
        transaction are not lag until it commits. A transaction's marker takes an offset that
        no record has, so after transactional input a partition shows a lag of 1 until the
        next record is committed."""
        consumer = self.consumer
        if consumer is None or self.metrics is None:
            return
        assigned = sorted(self.assignment())
        if not assigned:
            return
        ends = await consumer.end_offsets(assigned)
        unknown = [tp for tp in assigned if tp not in self._committed]
        if unknown:
            begins = await consumer.beginning_offsets(unknown)
            for tp in unknown:
                committed = await consumer.committed(tp)
                self._committed.setdefault(tp, begins[tp] if committed is None else committed)
                if committed is not None:  # a partition (re)assigned: its gauge shows it again
                    gauge = self.metrics.input_committed_offset
                    gauge.labels(partition=str(tp.partition)).set(self._committed[tp])
        for tp in assigned:
            if tp in self._committed:  # not revoked meanwhile
                lag = max(0, ends[tp] - self._committed[tp])
                self.metrics.input_lag.labels(partition=str(tp.partition)).set(lag)
            high, stable = consumer.highwater(tp), consumer.last_stable_offset(tp)
            if high is not None and stable is not None:
                self.metrics.input_open_transaction.labels(partition=str(tp.partition)).set(
                    max(0, high - stable)
                )

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Called by aiokafka before the partitions move: hand them over settled. From here
        # until the new assignment, getmany() blocks; then positions restart from commits.
        self._generation += 1
        self._carry = []  # positions restart from the committed offsets
        if not revoked:
            return
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
        if self.on_revoke is not None:
            await self.on_revoke(list(revoked))
        for tp in revoked:  # another member may commit past these before they come back
            self._committed.pop(tp, None)
            if self.metrics is not None:
                for gauge in (
                    self.metrics.input_lag,
                    self.metrics.input_committed_offset,
                    self.metrics.input_open_transaction,
                ):
                    with contextlib.suppress(KeyError):
                        gauge.remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.metrics is not None:
            self.metrics.assigned_partitions.set(len(assigned))
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
