"""The trainer's window read from the real broker in chunks: many partitions, more records than
the window holds, glitches among them, written by another client (librdkafka)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from confluent_kafka import Producer
from numpy.testing import assert_array_equal

from kafka_common.settings import KafkaSettings
from support.harness import run
from tests.conftest import window_readers_of
from trainer.reader_pool import ReaderPool
from trainer.window import CHUNK, Window, read_window

PARTITIONS = 3
RECORDS = 2 * CHUNK + 5_000
KEEP = CHUNK + 3_000
T0 = 1_700_000_000_000  # ms


@pytest.mark.parametrize("readers", [1, 2, "pool"])
def test_the_newest_records_of_every_partition_over_several_chunks(
    kafka_bootstrap, new_topic, readers
):
    """Timestamps are shuffled over the partitions: the window is the KEEP newest records of
    all, oldest first, glitches counted (not kept) among them; read by this process alone or
    by reader processes (trainer.window_readers: 2 readers for 3 partitions), or by readers
    kept waiting between reads (trainer.reader_pool), read after read."""
    topic = new_topic("window-chunks", partitions=PARTITIONS)
    rng = np.random.default_rng(0)
    stamps = T0 + rng.permutation(RECORDS)  # distinct: one newest set
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    glitch = {int(i) for i in rng.choice(RECORDS, 500, replace=False)}
    for i, ts in enumerate(stamps.tolist()):
        value = b'{"x": [1.0, true]}' if i in glitch else json.dumps({"x": [ts - T0, 0.5]}).encode()
        producer.produce(topic, value, partition=i % PARTITIONS, timestamp=ts)
        if i % 5_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    if readers == "pool":  # the run loop's: readers started after a read serve the next
        windows = run(_read_twice_with_a_pool(kafka, topic))
        assert not window_readers_of()
    else:
        windows = [run(read_window(kafka, topic, KEEP, readers=readers))]

    newest = np.sort(stamps)[-KEEP:]
    bad = {int(stamps[i]) for i in glitch}
    expected = [t - T0 for t in newest.tolist() if t not in bad]
    for window in windows:
        assert window.n_records == KEEP
        assert window.invalid == {"not_numeric": KEEP - len(expected)}
        assert_array_equal(window.points[:, 0], expected)  # oldest first
        assert_array_equal(window.points[:, 1], 0.5)


async def _read_twice_with_a_pool(kafka: KafkaSettings, topic: str) -> list[Window]:
    """A first read that starts its readers, a refill, a read that takes the waiting ones."""
    pool = ReaderPool(kafka, 2)
    try:
        first = await read_window(kafka, topic, KEEP, pool=pool)
        assert pool.taken == 0  # none waited: the first read started its own
        assert await pool.refill()
        waiting = set(window_readers_of())
        second = await read_window(kafka, topic, KEEP, pool=pool)
        assert pool.taken == 1  # the second took the waiting ones, which are gone with it
        assert len(waiting) == 2 and not waiting & set(window_readers_of())
        return [first, second]
    finally:
        await pool.close()


def test_readers_that_cannot_reach_the_broker_fail_the_read_and_are_gone(
    kafka_bootstrap, new_topic
):
    """The offsets come from the caller's broker; the readers are given one that refuses
    them (a closed port): the read fails with the reader's reason, no reader is left."""
    import socket

    from trainer.window import WindowBuilder
    from trainer.window_readers import ReaderError, read_in_processes

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    builder = WindowBuilder(20, 1, 65536)
    with pytest.raises(ReaderError, match=r"window reader .*KafkaConnectionError"):
        run(
            read_in_processes(
                KafkaSettings(bootstrap_servers=closed),
                new_topic("window-readers-refused", partitions=2),
                {0: (0, 10), 1: (0, 10)},
                builder,
                2,
            )
        )
    assert not window_readers_of()
