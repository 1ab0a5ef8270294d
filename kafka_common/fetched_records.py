"""The fetcher's records, built a record batch at a time instead of one at a time.

aiokafka's fetcher (0.14, pinned) turns every record into a `ConsumerRecord`, a dataclass built
by a Python `__init__`, inside a generator, and `getmany` appends them to its answer one by one:
on this service's ~40-byte records that was about half a microsecond a record of the thread that
runs the event loop, an eighth of a worker's time (docs/benchmarks.md). Here every batch's
records are built at once, by C-level loops, as `FetchedRecord`s: a NamedTuple with
`ConsumerRecord`'s fields in its order, so every reader of a consumed record (this project's,
Faust's) reads the same attributes. `getmany` then takes them as list slices.

What a fetch returns is unchanged: the same records, in the same order, the same positions after
each call, transactions and control batches handled as aiokafka handles them (its own methods
decide), a batch with more than `record_batches.READ_AT_ONCE` records held that many at a time.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterator
from itertools import islice, repeat
from typing import Any, NamedTuple, cast

import aiokafka.errors as kafka_errors
from aiokafka.consumer import fetcher
from aiokafka.structs import TopicPartition

from kafka_common.record_batches import READ_AT_ONCE


class FetchedRecord(NamedTuple):
    """A consumed record: `aiokafka.structs.ConsumerRecord`'s fields, in its order."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: Any
    value: Any
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: tuple[tuple[str, bytes | None], ...]


_new = tuple.__new__
#: A getter per field of a consumed record (a ConsumerRecord, a FetchedRecord or a parsed
#: record), for the C-level loops that read one field of every record of a batch.
FIELD = {name: operator.attrgetter(name) for name in FetchedRecord._fields}


def _sizes(fields: list[Any]) -> Any:
    """Each field's length, -1 for a null one (ConsumerRecord's serialized sizes)."""
    if None not in fields:
        return map(len, fields)
    return [-1 if f is None else len(f) for f in fields]


def build(
    tp: TopicPartition,
    records: list[Any],
    key_deserializer: Any = None,
    value_deserializer: Any = None,
) -> list[FetchedRecord]:
    """`records` (one batch's, as its parser reads them) as consumed records, built at once."""
    keys = list(map(FIELD["key"], records))
    values = list(map(FIELD["value"], records))
    n = len(records)
    rows = zip(
        repeat(tp.topic, n),
        repeat(tp.partition, n),
        map(FIELD["offset"], records),
        map(FIELD["timestamp"], records),
        map(FIELD["timestamp_type"], records),
        keys if key_deserializer is None else map(key_deserializer, keys),
        values if value_deserializer is None else map(value_deserializer, values),
        map(FIELD["checksum"], records),
        _sizes(keys),
        _sizes(values),
        map(tuple, map(FIELD["headers"], records)),
        strict=True,
    )
    return list(map(_new, repeat(FetchedRecord, n), rows))


class BatchedPartitionRecords(fetcher.PartitionRecords):
    """One partition's fetched records, read a record batch (or `READ_AT_ONCE` of its records)
    at a time; `take(n)` hands out up to n of them as one list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Generators that held `self` would make a cycle that leaves every fetch (its records
        # and bytes) to the garbage collector instead of freeing it at once, and the collector's
        # passes over them show as pauses of tens of ms: aiokafka's own is never run here, and
        # ours holds a weak proxy.
        self._records_iterator = None
        self._pending: list[FetchedRecord] = []
        self._at = 0  # the next of `_pending` to hand out
        owner = cast(BatchedPartitionRecords, weakref.proxy(self))
        self._chunks: Iterator[list[FetchedRecord]] = _read_chunks(owner)

    def _fill(self) -> bool:
        """Reads the next chunk of records into `_pending`; False when none is left."""
        for chunk in self._chunks:
            self._pending, self._at = chunk, 0
            return True
        self._pending, self._at = [], 0
        return False

    def __next__(self) -> FetchedRecord:  # getone(), and anything else that iterates
        if self._at >= len(self._pending) and not self._fill():
            raise StopIteration
        record = self._pending[self._at]
        self._at += 1
        self.next_fetch_offset = record.offset + 1
        return record

    def take(self, max_records: int | None) -> tuple[list[FetchedRecord], bool]:
        """Up to `max_records` records (all if None), and whether none are left."""
        out: list[FetchedRecord] = []
        while max_records is None or len(out) < max_records:
            if self._at >= len(self._pending) and not self._fill():
                return out, True
            end = len(self._pending)
            if max_records is not None:
                end = min(end, self._at + max_records - len(out))
            piece = self._pending[self._at : end]
            self._at = end
            self.next_fetch_offset = piece[-1].offset + 1
            if out:
                out += piece
            else:
                out = piece
        return out, False


def _data_batches(owner: BatchedPartitionRecords) -> Iterator[Any]:
    """The batches whose records are read, skipping as aiokafka's `_unpack_records` does:
    aborted transactions' batches (read_committed) and control batches."""
    records = owner._records
    while records.has_next():
        batch = records.next_batch()
        if owner._check_crcs and not batch.validate_crc():
            raise kafka_errors.CorruptRecordException(f"Invalid CRC - {owner._tp}")
        if owner._isolation_level == fetcher.READ_COMMITTED and batch.producer_id is not None:
            owner._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and owner._contains_abort_marker(batch):
                owner._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in owner._aborted_producers:
                owner.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            owner.next_fetch_offset = batch.next_offset
            continue
        yield batch
        # As aiokafka: the batch's own end, past records compaction removed.
        owner.next_fetch_offset = batch.next_offset


def _read_chunks(owner: BatchedPartitionRecords) -> Iterator[list[FetchedRecord]]:
    """`owner`'s records, a batch (or READ_AT_ONCE of its records) at a time, built."""
    for batch in _data_batches(owner):
        parsed = iter(batch)
        while chunk := list(islice(parsed, READ_AT_ONCE)):
            if chunk[0].offset < owner.next_fetch_offset:  # a compressed legacy set's head
                chunk = [r for r in chunk if r.offset >= owner.next_fetch_offset]
                if not chunk:
                    continue
            yield build(owner._tp, chunk, owner._key_deserializer, owner._value_deserializer)


_original_getall = fetcher.FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    """FetchResult.getall over `BatchedPartitionRecords`: the same answer, in list slices."""
    records = self._partition_records
    if not isinstance(records, BatchedPartitionRecords):
        return _original_getall(self, max_records)
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    out, done = records.take(max_records)
    self._update_position()
    if done:
        self._partition_records = None
    return out


def install() -> None:
    """Makes every aiokafka consumer of this process build its records a batch at a time.
    Idempotent."""
    fetcher.PartitionRecords = BatchedPartitionRecords
    fetcher.FetchResult.getall = _getall
