"""The input topic, read in micro-batches by one aiokafka consumer in the workers' group.

Why not Faust's own topic stream: Faust turns every Kafka record into a Message, an Event and a
trip through a stream queue, then acks each one; on this service's records (~40 bytes) that
per-record path, not the model, bounded a worker at 0.2x a raw aiokafka pipe (see
bench/results/stream.md). Here a micro-batch is one `getmany` call: records stay aiokafka's
ConsumerRecords, and a batch becomes one event on the agent's channel (stream_app.agents).

Micro-batching follows Triton's dynamic batcher: a batch closes when it holds `max_batch`
records, or `max_delay` after its first record arrived, whichever comes first.

Offsets are committed only for records whose outputs the broker has: `delivered()` is called
per batch, in order, after delivery, and a background task commits the newest delivered offsets.
On a rebalance the consumer waits, before giving up its partitions, until every batch it fetched
is delivered and committed, so a partition's next owner starts exactly after the last delivered
record (no loss; duplicates only on a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from kafka_common.settings import KafkaSettings
from stream_app.batch import InRecord
from stream_app.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: How long an idle poll waits before looking again (it returns as soon as a record arrives).
IDLE_POLL_S = 0.5


def _in_record(r: ConsumerRecord) -> InRecord:
    ts = r.timestamp / 1000 if r.timestamp is not None and r.timestamp >= 0 else None
    return InRecord(r.key, r.value, r.topic, r.partition, r.offset, ts)


class InBatch(NamedTuple):
    """One micro-batch of input records, and the offsets to commit once it is delivered."""

    number: int
    records: list[InRecord]
    offsets: dict[TopicPartition, int]  # next offset to read, per partition


class PointSource(ConsumerRebalanceListener):
    """Fetches micro-batches of the input topic and commits them once delivered."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        max_batch: int,
        max_delay_s: float,
        session_timeout_s: float,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.metrics = metrics
        self.topic = topic
        self.group_id = group_id
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.session_timeout_s = session_timeout_s
        self.consumer: AIOKafkaConsumer | None = None
        self._fetched = 0  # batches handed out
        self._delivered_batches = 0  # of those, delivered (in order)
        self._settled = asyncio.Condition()
        self._closing = False
        self._generation = 0  # rebalances begun
        self._delivered: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **self.kafka.client_options(),
            group_id=self.group_id,
            client_id=f"{self.group_id}-points",
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # points sent before any worker ran are classified
            session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, self.session_timeout_s / 3) * 1000),
            # A fetch returns as soon as it has data; this caps how long an idle one is held
            # at the broker, so the batch deadline is never overrun by a fetch in flight.
            fetch_max_wait_ms=5,
        )
        self.consumer.subscribe([self.topic], listener=self)
        await self.consumer.start()
        self._committer = asyncio.create_task(self._commit_loop(), name="gmm-commit")

    async def stop(self) -> None:
        """Commits what was delivered and leaves the group; the rest is read again."""
        if self._committer is not None:
            self._committer.cancel()
            self._committer = None
        try:
            await asyncio.wait_for(self._commit(), 5.0)
        except (KafkaError, TimeoutError) as exc:
            log.warning("final commit failed: %s", exc)
        self._closing = True
        async with self._settled:
            self._settled.notify_all()
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def next_batch(self) -> InBatch:
        """Waits for a record, then fills a batch until it is full or its delay has passed."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        records: list[InRecord] = []
        offsets: dict[TopicPartition, int] = {}
        deadline: float | None = None
        while len(records) < self.max_batch:
            generation = self._generation
            timeout = IDLE_POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            fetched = await consumer.getmany(
                timeout_ms=int(timeout * 1000), max_records=self.max_batch - len(records)
            )
            if self._generation != generation and records:
                # A rebalance while filling: the consumer reads on from the committed offsets,
                # so what the batch held is read again (here or by the partition's new owner).
                log.info("dropping a partial batch of %d records at a rebalance", len(records))
                records, offsets, deadline = [], {}, None
            for tp, items in fetched.items():
                records.extend(map(_in_record, items))
                offsets[tp] = items[-1].offset + 1
            if deadline is None:
                if not records:
                    continue
                deadline = time.monotonic() + self.max_delay_s
            if time.monotonic() >= deadline:
                break
        number = self._fetched
        self._fetched += 1
        if self.metrics is not None:
            for tp, offset in offsets.items():
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    self.metrics.input_lag.labels(partition=str(tp.partition)).set(
                        highwater - offset
                    )
        return InBatch(number, records, offsets)

    async def delivered(self, batch: InBatch) -> None:
        """Marks a batch's outputs delivered, so its offsets may be committed.

        Batches must be passed in the order fetched. Commits run one at a time in the
        background, each carrying every partition's newest delivered offset: a commit per
        batch, awaited, would cap a worker at one batch per broker round trip.
        """
        self._delivered.update(batch.offsets)
        self._commit_wanted.set()
        async with self._settled:
            self._delivered_batches = batch.number + 1
            self._settled.notify_all()

    def in_flight(self) -> int:
        """Batches fetched but not yet delivered."""
        return self._fetched - self._delivered_batches

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            try:
                await self._commit()
            except KafkaError as exc:
                # Not fatal: the next commit carries the same offsets or later ones, and a
                # partition that moved is re-read by its new owner (duplicates, never a loss).
                log.warning("offset commit failed: %s", exc)
                await asyncio.sleep(0.5)

    async def _commit(self) -> None:
        consumer = self.consumer
        if consumer is None or self._closing:
            return
        async with self._commit_lock:
            assigned = consumer.assignment()
            offsets = {
                tp: o
                for tp, o in self._delivered.items()
                if tp in assigned and self._committed.get(tp) != o
            }
            if offsets:
                await consumer.commit(offsets)
                self._committed.update(offsets)
                if self.metrics is not None:
                    for tp, offset in offsets.items():
                        self.metrics.input_committed_offset.labels(partition=str(tp.partition)).set(
                            offset
                        )

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Called by aiokafka before the partitions move: hand them over settled. From here
        # until the new assignment, getmany() blocks; then positions restart from commits.
        self._generation += 1
        if not revoked:
            return
        log.info("partitions revoked (%d); settling %d batch(es)", len(revoked), self.in_flight())
        async with self._settled:
            await self._settled.wait_for(lambda: self._closing or self.in_flight() == 0)
        try:
            await self._commit()
        except KafkaError as exc:
            log.warning("commit before giving up partitions failed: %s", exc)
        for tp in revoked:  # another member may commit past these before they come back
            self._delivered.pop(tp, None)
            self._committed.pop(tp, None)
            if self.metrics is not None:
                for gauge in (self.metrics.input_lag, self.metrics.input_committed_offset):
                    with contextlib.suppress(KeyError):
                        gauge.remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.metrics is not None:
            self.metrics.assigned_partitions.set(len(assigned))
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
