"""The fetcher's records built a batch at a time: the same records, positions and skips as
aiokafka's own record-by-record path, for any fetch and any run of `getmany` sizes (the broker
tests, every consumer of the project included, run on this path)."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import ConsumerRecord, TopicPartition

from kafka_common import fetched_records as fr
from kafka_common import record_batches as rb

TP = TopicPartition("points", 3)
ORIGINAL = fr.BatchedPartitionRecords.__mro__[1]  # aiokafka's PartitionRecords
PRODUCER = 7


@pytest.fixture(autouse=True)
def installed():
    rb.install(16 * 1024 * 1024)
    fr.install()


def batch(base, records, *, codec=0, producer_id=-1, control=False):
    transactional = producer_id >= 0
    builder = DefaultRecordBatchBuilder(
        2, codec, transactional, producer_id, 0 if transactional else -1, -1, 10**8
    )
    for i, (key, value, headers) in enumerate(records):
        stamp = 1_700_000_000_000 + base + i
        builder.append(i, timestamp=stamp, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")
    if control:  # the control flag, and the CRC over the attributes onwards again
        (attributes,) = struct.unpack_from(">h", raw, 21)
        struct.pack_into(">h", raw, 21, attributes | 0x20)
        struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def marker(base, abort):
    """A transaction's end marker: control record key (version 0, type 0 abort / 1 commit)."""
    key = struct.pack(">hh", 0, 0 if abort else 1)
    return batch(base, [(key, struct.pack(">hi", 0, 0), [])], producer_id=PRODUCER, control=True)


def random_fetch(rng):
    """A fetch's bytes, the aborted transactions the broker lists with it, and its first
    offset: plain batches of every codec, a committed and an aborted transaction."""
    chunks, aborted, offset = [], [], 10
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(["plain", "plain", "plain", "committed", "aborted"])
        n = rng.choice([1, 2, 5, 40, 300])
        records = [
            (
                rng.choice([None, b"k%d" % (offset + i), b""]),
                rng.choice([b'{"x": 1.5}', None, b"", b"v" * rng.randint(0, 50)]),
                rng.choice([[], [("h", b"1")], [("h", None), ("g", b"2")]]),
            )
            for i in range(n)
        ]
        codec = rng.choice([0, 1, 2, 3, 4])
        if kind == "plain":
            chunks.append(batch(offset, records, codec=codec))
            offset += n
        else:
            if kind == "aborted":
                aborted.append((PRODUCER, offset))
            chunks.append(batch(offset, records, codec=codec, producer_id=PRODUCER))
            chunks.append(marker(offset + n, abort=kind == "aborted"))
            offset += n + 1
    return b"".join(chunks), aborted


class State:
    """aiokafka's partition state, as a FetchResult reads and moves it."""

    def __init__(self, position):
        self.position, self.paused = position, False

    def consumed_to(self, position):
        self.position = position


class Assignment:
    active = True

    def __init__(self, position):
        self.state = State(position)

    def state_value(self, tp):
        return self.state


def drain(partition_records_type, data, aborted, sizes):
    """Every getmany-sized answer of one fetch and the position after each."""
    start = 10
    records = partition_records_type(
        TP, rb.TolerantRecords(data), aborted, start, None, None, True, fetcher.READ_COMMITTED
    )
    assignment = Assignment(start)
    result = fetcher.FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
    answers = []
    for size in sizes:
        if not result.has_more():
            break
        got = result.getall(size)
        answers.append(([tuple(getattr(r, f) for f in fr.FetchedRecord._fields) for r in got],
                        assignment.state.position))  # fmt: skip
    return answers, result.has_more()


@pytest.mark.parametrize("seed", range(40))
def test_any_fetch_reads_as_aiokafka_reads_it(seed):
    rng = random.Random(seed)
    data, aborted = random_fetch(rng)
    sizes = [rng.choice([None, 1, 3, 100, 1024, 5000]) for _ in range(200)]
    assert drain(fr.BatchedPartitionRecords, data, aborted, sizes) == drain(
        ORIGINAL, data, aborted, sizes
    )


def test_an_aborted_transaction_is_skipped_and_the_position_passes_it():
    data = (
        batch(10, [(None, b"a", [])])
        + batch(11, [(None, b"aborted", [])] * 3, producer_id=PRODUCER)
        + marker(14, abort=True)
        + batch(15, [(None, b"b", [])])
    )
    answers, more = drain(fr.BatchedPartitionRecords, data, [(PRODUCER, 11)], [None])
    [(records, position)] = answers
    assert [r[fr.FetchedRecord._fields.index("value")] for r in records] == [b"a", b"b"]
    assert position == 16 and not more


def test_a_large_batch_is_held_read_at_once_records_at_a_time(monkeypatch):
    monkeypatch.setattr(fr, "READ_AT_ONCE", 16)
    data = batch(10, [(None, b"%d" % i, []) for i in range(100)])
    records = fr.BatchedPartitionRecords(
        TP, rb.TolerantRecords(data), [], 10, None, None, False, fetcher.READ_COMMITTED
    )
    held, got = [], []
    while True:
        chunk, done = records.take(7)
        held.append(len(records._pending))
        got += chunk
        if done:
            break
    assert [r.offset for r in got] == list(range(10, 110))
    assert max(held) == 16


def test_one_record_at_a_time_reads_the_same():
    data, aborted = random_fetch(random.Random(99))
    one = fr.BatchedPartitionRecords(
        TP, rb.TolerantRecords(data), aborted, 10, None, None, False, fetcher.READ_COMMITTED
    )
    whole = fr.BatchedPartitionRecords(
        TP, rb.TolerantRecords(data), aborted, 10, None, None, False, fetcher.READ_COMMITTED
    )
    assert list(one) == whole.take(None)[0]
    assert one.next_fetch_offset == whole.next_fetch_offset


def test_a_fetched_record_has_consumer_records_fields_in_its_order():
    assert fr.FetchedRecord._fields == tuple(f.name for f in dataclasses.fields(ConsumerRecord))


def test_deserializers_see_the_raw_bytes_and_sizes_stay_the_raw_sizes():
    data = batch(10, [(b"key", b"value", []), (None, None, [])])
    upper, size = (lambda k: k and k.upper()), (lambda v: v and len(v))
    records = fr.BatchedPartitionRecords(
        TP, rb.TolerantRecords(data), [], 10, upper, size, False, fetcher.READ_COMMITTED
    )
    got, _ = records.take(None)
    assert [(r.key, r.value, r.serialized_key_size, r.serialized_value_size) for r in got] == [
        (b"KEY", 5, 3, 5),
        (None, None, -1, -1),
    ]


@pytest.mark.parametrize("taken", [0, 1, None])
def test_a_fetch_is_freed_as_soon_as_it_is_dropped_not_by_the_garbage_collector(taken):
    import gc
    import weakref

    data, aborted = random_fetch(random.Random(5))
    gc.disable()
    try:
        records = fr.BatchedPartitionRecords(
            TP, rb.TolerantRecords(data), aborted, 10, None, None, False, fetcher.READ_COMMITTED
        )
        if taken != 0:
            records.take(taken)
        alive = weakref.ref(records)
        del records
        assert alive() is None  # no reference cycle: freed at once, with its records and bytes
    finally:
        gc.enable()
