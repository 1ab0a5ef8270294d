"""The real broker carries records intact: through aiokafka, and through kcat (independent)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

N = 10_000


async def consume_n(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records = []
    try:
        while len(records) < n:
            batch = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=5000)
            if not batch:
                break  # nothing arrived for timeout_s: the assertion below reports the shortfall
            for msgs in batch.values():
                records.extend(msgs)
    finally:
        await consumer.stop()
    return records


async def test_aiokafka_round_trip_10k(kafka_bootstrap, new_topic):
    topic = new_topic("roundtrip", partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(N):
            payload = json.dumps({"id": i, "x": i * 0.5}).encode()
            await producer.send(topic, payload, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()

    records = await consume_n(kafka_bootstrap, topic, N)
    assert len(records) == N
    by_id = {json.loads(r.value)["id"]: r for r in records}
    assert sorted(by_id) == list(range(N))
    assert all(r.key == str(i).encode() for i, r in by_id.items())
    assert all(json.loads(r.value)["x"] == i * 0.5 for i, r in by_id.items())


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)"
)
def test_kcat_round_trip_10k(kafka_bootstrap, new_topic):
    topic = new_topic("kcat", partitions=2)
    lines = "".join(f'{i}\t{{"id": {i}, "x": {i}}}\n' for i in range(N))
    subprocess.run(
        ["kcat", "-P", "-b", kafka_bootstrap, "-t", topic, "-K", "\t"],
        input=lines.encode(),
        check=True,
        timeout=60,
    )
    out = subprocess.run(
        [
            "kcat",
            "-C",
            "-b",
            kafka_bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    got = [line.split("\t", 1) for line in out.splitlines()]
    assert len(got) == N
    assert sorted(int(k) for k, _ in got) == list(range(N))
    assert all(json.loads(v)["id"] == int(k) for k, v in got)
