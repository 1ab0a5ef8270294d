"""The trainer's window read from the real broker in chunks: many partitions, more records than
the window holds, glitches among them, written by another client (librdkafka)."""

from __future__ import annotations

import json

import numpy as np
from confluent_kafka import Producer
from numpy.testing import assert_array_equal

from kafka_common.settings import KafkaSettings
from support.harness import run
from trainer.window import CHUNK, read_window

PARTITIONS = 3
RECORDS = 2 * CHUNK + 5_000
KEEP = CHUNK + 3_000
T0 = 1_700_000_000_000  # ms


def test_the_newest_records_of_every_partition_over_several_chunks(kafka_bootstrap, new_topic):
    """Timestamps are shuffled over the partitions: the window is the KEEP newest records of
    all, oldest first, glitches counted (not kept) among them."""
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

    window = run(read_window(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, KEEP))

    newest = np.sort(stamps)[-KEEP:]
    bad = {int(stamps[i]) for i in glitch}
    expected = [t - T0 for t in newest.tolist() if t not in bad]
    assert window.n_records == KEEP
    assert window.invalid == {"not_numeric": KEEP - len(expected)}
    assert_array_equal(window.points[:, 0], expected)  # oldest first
    assert_array_equal(window.points[:, 1], 0.5)
