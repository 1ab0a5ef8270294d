"""Reading the training window: the newest input records, validated by the worker's rules.

The window is the newest `max_records` records across all partitions (each partition is read
from at most `max_records` before its end, then all are merged by timestamp), optionally only
those of the last `max_age_s` seconds. Invalid records are skipped and counted by reason.

Memory is bounded in bytes, whatever the records: the consumer's fetches are (GMM_FETCH_*
settings, committed records only), and each record is decoded as it arrives, so the window
keeps points and reasons, never the raw values (a 60 KB record that holds one number costs a
number).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import NamedTuple

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from kafka_common.record_batches import undecodable_reason
from kafka_common.settings import KafkaSettings
from kafka_common.topics import topic_partitions
from mixture.params import MAX_DIM
from mixture.points import PointError, decode_point


class Window(NamedTuple):
    points: np.ndarray  # (N, D); N may be 0
    invalid: collections.Counter[str]  # reason -> count
    n_records: int  # records read, valid or not


async def read_window(
    kafka: KafkaSettings,
    topic: str,
    max_records: int,
    max_age_s: float = 0,
    dim: int | None = None,
    max_record_bytes: int = 65536,
    deadline_s: float = 300.0,
) -> Window:
    """Reads and validates the window.

    dim: the dimension points must have (the current model's); None: the most common among
    the window's valid points (ties: the newest), so that a stray record of another
    dimension cannot decide the first model's. Points of another dimension count as
    `wrong_dim`. Reading takes at most deadline_s (TimeoutError: the cycle is retried).
    """
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka#647: let the no-group task start before any stop
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return Window(np.zeros((0, dim or 1)), collections.Counter(), 0)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        starts = {tp: max(begins[tp], ends[tp] - max_records) for tp in tps}
        if max_age_s > 0:
            since = int((time.time() - max_age_s) * 1000)
            found = await consumer.offsets_for_times({tp: since for tp in tps})
            for tp in tps:
                at = found.get(tp)
                starts[tp] = max(starts[tp], at.offset if at is not None else ends[tp])
        for tp in tps:
            consumer.seek(tp, starts[tp])
        records: list[tuple[int, np.ndarray | str]] = []
        remaining = {tp for tp in tps if starts[tp] < ends[tp]}
        async with asyncio.timeout(deadline_s):
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
                for tp, items in batch.items():
                    records.extend(
                        (r.timestamp, _decoded(r.value, dim, max_record_bytes, r))
                        for r in items
                        if r.offset < ends[tp]
                    )
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()

    records.sort(key=lambda item: item[0])
    records = records[-max_records:]
    return _window(records, dim)


def _decoded(
    value: bytes | None,
    dim: int | None,
    max_record_bytes: int,
    record: ConsumerRecord | None = None,
) -> np.ndarray | str:
    """A record's point coordinates (float64, NaN where missing), or the reason it has none.

    Coordinates are kept as an array, at most MAX_DIM of them (no model has more): a record of
    any size costs at most MAX_DIM x 8 bytes in the window, never a list of Python floats."""
    try:
        if value is None:
            if record is not None and undecodable_reason(record) is not None:
                return "undecodable"
            raise PointError("tombstone", "the record has a null value (a tombstone)")
        x = decode_point(value, dim, max_record_bytes).x
    except PointError as exc:
        return exc.reason
    if len(x) > MAX_DIM:
        return "wrong_dim"
    # None (a missing coordinate) becomes NaN, which the fit treats as missing.
    return np.array(x, dtype=np.float64)


def _valid_points(
    records: list[tuple[int, bytes | None]], dim: int | None, max_record_bytes: int
) -> Window:
    """The window of raw records' valid points (oldest first), see read_window."""
    return _window([(t, _decoded(v, dim, max_record_bytes)) for t, v in records], dim)


def _window(records: list[tuple[int, np.ndarray | str]], dim: int | None) -> Window:
    """The window of decoded records (oldest first): see read_window for `dim`."""
    decoded, invalid = [], collections.Counter[str]()
    for _, x in records:
        if isinstance(x, str):
            invalid[x] += 1
        else:
            decoded.append(x)
    if dim is None and decoded:
        sizes = collections.Counter(len(x) for x in decoded)
        newest = {len(x): i for i, x in enumerate(decoded)}
        dim = max(sizes, key=lambda d: (sizes[d], newest[d]))
    rows = [x for x in decoded if len(x) == dim]
    if len(rows) < len(decoded):
        invalid["wrong_dim"] += len(decoded) - len(rows)
    points = np.array(rows, dtype=np.float64) if rows else np.zeros((0, dim or 1))
    return Window(points, invalid, len(records))
