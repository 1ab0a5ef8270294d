"""PointSource's batches on an in-memory consumer: bounded in records and bytes, records past a
full batch carried (never lost, never read twice), long keys cut."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from kafka_common.settings import KafkaSettings
from stream_app.records import KeyCut, cut_key
from stream_app.source import LOG_APPEND_TIME, PointSource, fitting, in_records

TP0 = TopicPartition("points", 0)
TP1 = TopicPartition("points", 1)


def record(tp: TopicPartition, offset: int, size: int = 10, key: bytes | None = b"k"):
    value = b"v" * size
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 1_700_000_000_000, 0, key, value, None,
        -1 if key is None else len(key), len(value), (),
    )  # fmt: skip


class FakeConsumer:
    """getmany hands out queued records in order, at most max_records per call."""

    def __init__(self, queues: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.queues = {tp: list(items) for tp, items in queues.items()}
        self.calls = 0

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):
        self.calls += 1
        room = max_records or 10**9
        out = {}
        for tp, items in self.queues.items():
            take, self.queues[tp] = items[:room], items[room:]
            if take:
                out[tp] = take
                room -= len(take)
        return out


def source(consumer: FakeConsumer, max_batch: int = 100, max_bytes: int = 10**9, **kw):
    src = PointSource(
        KafkaSettings(), "points", "g", max_batch, 0.0, 10.0, max_batch_bytes=max_bytes, **kw
    )
    src.consumer = consumer  # type: ignore[assignment]
    return src


def test_an_empty_batch_takes_one_record_of_any_size_and_no_more_than_fit():
    # A record counts its key's and value's bytes, and 2 (a null key counts -1).
    items = [record(TP0, i, size=100, key=None) for i in range(5)]
    assert fitting(items, 10, 0, 50) == (1, 101)  # one oversized record is a batch of its own
    assert fitting(items, 10, 1, 50) == (0, 1)
    assert fitting(items, 10, 0, 250) == (2, 202)
    assert fitting(items, 3, 0, 10**6) == (3, 303)  # the record room caps it too
    keyed = [record(TP0, 0, size=10, key=b"k" * 30)]
    assert fitting(keyed, 1, 0, 39) == (1, 42)  # keys count


async def test_a_batch_full_in_bytes_carries_the_rest_to_the_next_without_refetching():
    consumer = FakeConsumer(
        {TP0: [record(TP0, i, 100) for i in range(6)], TP1: [record(TP1, i, 100) for i in range(4)]}
    )
    src = source(consumer, max_batch=100, max_bytes=350)  # 3 records of 103 bytes a batch
    batches = [await src.next_batch() for _ in range(4)]
    got = [[(r.partition, r.offset) for r in b.records] for b in batches]
    assert got == [
        [(0, 0), (0, 1), (0, 2)],
        [(0, 3), (0, 4), (0, 5)],
        [(1, 0), (1, 1), (1, 2)],
        [(1, 3)],
    ]
    assert [b.offsets for b in batches] == [{TP0: 3}, {TP0: 6}, {TP1: 3}, {TP1: 4}]
    assert [b.number for b in batches] == [0, 1, 2, 3]
    assert consumer.calls <= 3  # carried records are never fetched again


async def test_the_record_limit_still_holds():
    consumer = FakeConsumer({TP0: [record(TP0, i) for i in range(10)]})
    src = source(consumer, max_batch=4)
    sizes = [len((await src.next_batch()).records) for _ in range(3)]
    assert sizes == [4, 4, 2]


async def test_a_rebalance_drops_the_carried_records():
    consumer = FakeConsumer({TP0: [record(TP0, i, 100) for i in range(6)]})
    src = source(consumer, max_batch=100, max_bytes=250)
    first = await src.next_batch()
    assert [r.offset for r in first.records] == [0, 1]
    await src.on_partitions_revoked([])  # positions restart from the committed offsets
    consumer.queues[TP0] = [record(TP0, i, 100) for i in range(2, 4)]  # what is fetched again
    second = await src.next_batch()
    assert [r.offset for r in second.records] == [2, 3]


def test_a_key_over_the_limit_is_cut_to_its_first_bytes_with_its_size_and_digest():
    long_key = bytes(range(256)) * 40
    items = [record(TP0, 0, key=b"short"), record(TP0, 1, key=long_key), record(TP0, 2, key=None)]
    short, cut, none = in_records(items, 4096)
    assert (short.key, short.key_cut) == (b"short", None)
    assert (none.key, none.key_cut) == (None, None)
    assert cut.key == long_key[:4096]
    assert cut.key_cut == KeyCut(len(long_key), hashlib.sha256(long_key).hexdigest())
    assert cut_key(b"abc", 3) == (b"abc", None)
    assert cut_key(b"abcd", 3)[0] == b"abc"


class WaitingConsumer:
    """getmany hands out `first` once, then waits out each timeout with nothing; it notes
    every timeout asked for."""

    def __init__(self, first: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.first: dict[TopicPartition, list[ConsumerRecord]] | None = first
        self.timeouts: list[int] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):
        if self.first is not None:
            first, self.first = self.first, None
            return first
        self.timeouts.append(timeout_ms)
        await asyncio.sleep(timeout_ms / 1000)
        return {}


def stamped(tp: TopicPartition, age_s: float, timestamp_type: int, timestamp: int | None = None):
    r = record(tp, 0)
    if timestamp is None:
        timestamp = int((time.time() - age_s) * 1000)
    return dataclasses.replace(r, timestamp=timestamp, timestamp_type=timestamp_type)


@pytest.mark.parametrize(
    ("first", "low", "high"),
    [
        # 200 ms from the broker's append: about 140 left when the record is fetched
        ([(TP0, 0.06, LOG_APPEND_TIME, None)], 100, 141),
        # a producer's CreateTime (maybe event time) is never trusted: the whole delay
        ([(TP0, 0.06, 0, None)], 160, 200),
        # already late (or a worker clock ahead): still half the delay, batching stays alive
        ([(TP0, 60.0, LOG_APPEND_TIME, None)], 60, 100),
        # a worker clock behind the broker's: the whole delay, as without append times
        ([(TP0, -5.0, LOG_APPEND_TIME, None)], 160, 200),
        # no timestamp at all
        ([(TP0, 0.0, LOG_APPEND_TIME, -1)], 160, 200),
        # the oldest first record of the batch's partitions counts
        ([(TP0, 0.02, LOG_APPEND_TIME, None), (TP1, 0.08, LOG_APPEND_TIME, None)], 80, 121),
    ],
)
async def test_a_batch_waits_its_delay_from_the_brokers_append_time_when_the_topic_has_one(
    first, low, high
):
    """On a LogAppendTime topic a batch's delay runs from its first record's append time (its
    fetch took part of it), that part capped at half the delay."""
    first = [stamped(*spec) for spec in first]  # stamped now, not at collection
    consumer = WaitingConsumer({TopicPartition(r.topic, r.partition): [r] for r in first})
    src = PointSource(KafkaSettings(), "points", "g", 100, 0.2, 10.0)
    src.consumer = consumer  # type: ignore[assignment]
    batch = await src.next_batch()
    assert len(batch.records) == len(first)
    assert low <= consumer.timeouts[0] <= high


@pytest.mark.parametrize("timestamps", [[5, 1_700_000_000_123], [-1, 7], [None, 0]])
def test_in_records_reads_consumer_records_and_fetched_records_alike(timestamps):
    from kafka_common.fetched_records import FetchedRecord

    items = [
        dataclasses.replace(record(TP1, 10 + i, key=key), timestamp=ts)
        for i, (key, ts) in enumerate(zip([b"a", None], timestamps, strict=True))
    ]
    fetched = [FetchedRecord(*dataclasses.astuple(r)) for r in items]
    got = in_records(items, 4096)
    assert got == in_records(fetched, 4096)
    assert [(r.key, r.topic, r.partition, r.offset) for r in got] == [
        (b"a", "points", 1, 10),
        (None, "points", 1, 11),
    ]
    assert [r.timestamp for r in got] == [
        None if ts is None or ts < 0 else ts / 1000 for ts in timestamps
    ]
    assert all(r.key_cut is None and r.undecodable is None for r in got)
