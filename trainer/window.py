"""Reading the training window: the newest input records, validated by the worker's rules.

The window is the newest `max_records` records across all partitions (each partition is read
from at most `max_records` before its end, then all are merged by timestamp), optionally only
those of the last `max_age_s` seconds. Invalid records are skipped and counted by reason.

Memory is bounded by the points, whatever the records: the consumer's fetches are bounded in
bytes (GMM_FETCH_* settings, committed records only), records are decoded a chunk (CHUNK) at a
time in a thread, off the event loop, and the window keeps only arrays
(`trainer.window_builder`). The partitions are read by this process, or by reader processes
(`trainer.window_readers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka import AIOKafkaConsumer

from kafka_common.settings import KafkaSettings
from kafka_common.topics import topic_partitions
from trainer.reader_pool import ReaderPool
from trainer.window_builder import Window, WindowBuilder
from trainer.window_readers import CHUNK, Readers, read_ranges

__all__ = ["CHUNK", "Window", "WindowBuilder", "read_window"]


async def read_window(
    kafka: KafkaSettings,
    topic: str,
    max_records: int,
    max_age_s: float = 0,
    dim: int | None = None,
    max_record_bytes: int = 65536,
    deadline_s: float = 300.0,
    readers: int = 1,
    pool: ReaderPool | None = None,
) -> Window:
    """Reads and validates the window.

    dim: the dimension points must have (the current model's); None: the most common among
    the window's valid points (ties: the newest), so that a stray record of another
    dimension cannot decide the first model's. Points of another dimension count as
    `wrong_dim`. Reading takes at most deadline_s (TimeoutError: the cycle is retried).
    readers: processes that read and decode the partitions between them (at most one a
    partition; `trainer.window_readers`); 1: this process alone.
    pool: readers started ahead (`trainer.reader_pool`), used instead of `readers` new ones.
    """
    async with contextlib.AsyncExitStack() as stack:
        # Reader processes start first: their start-up overlaps the offsets' queries.
        started = await pool.take() if pool is not None else Readers(kafka, readers)
        processes = None
        if started.count > 1 or started.procs:
            processes = await stack.enter_async_context(started)
        consumer = AIOKafkaConsumer(
            **kafka.consumer_options(), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        await asyncio.sleep(0)  # aiokafka#647: let the no-group task start before any stop
        async with asyncio.timeout(deadline_s):
            ranges = await _ranges(consumer, topic, max_records, max_age_s)
            builder = WindowBuilder(sum(b - a for a, b in ranges.values()), dim, max_record_bytes)
            if processes is not None and len(ranges) > 1:
                await processes.read(topic, ranges, builder, deadline_s)
            else:
                await read_ranges(consumer, topic, ranges, builder)
    return builder.window(max_records)


async def _ranges(
    consumer: AIOKafkaConsumer, topic: str, max_records: int, max_age_s: float
) -> dict[int, tuple[int, int]]:
    """The offsets [start, end) to read of each partition that has any: at most max_records
    before its end (and, with max_age_s, none older than that)."""
    tps = await topic_partitions(consumer, topic)
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    begins = await consumer.beginning_offsets(tps)
    starts = {tp: max(begins[tp], ends[tp] - max_records) for tp in tps}
    if max_age_s > 0:
        since = int((time.time() - max_age_s) * 1000)
        found = await consumer.offsets_for_times({tp: since for tp in tps})
        for tp in tps:
            at = found.get(tp)
            starts[tp] = max(starts[tp], at.offset if at is not None else ends[tp])
    return {tp.partition: (starts[tp], ends[tp]) for tp in tps if starts[tp] < ends[tp]}
