"""Faust's exactly_once under the kill test: is anything duplicated for a read_committed reader?

A Faust app with processing_guarantee="exactly_once" (bench/eos_app.py) forwards N keyed records
from an input to a co-partitioned output; it is SIGKILLed mid-stream and restarted; a consumer
with isolation_level="read_committed" then counts lost and duplicated records. Writes
bench/results/exactly_once.{md,json}.

    python -m bench.exactly_once [--records N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._common import machine, markdown_table, write_results
from bench.stream import BOOTSTRAP, produce
from kafka_common.topics import topic_partitions
from support.harness import Topics, count_records, free_port, wait_for


async def _create(topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.input, 4, 1), NewTopic(topics.output, 4, 1)])
    finally:
        await admin.close()


async def _read_committed(topic: str, timeout: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    await asyncio.sleep(0)
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        keys: list[bytes] = []
        deadline = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < deadline and idle < 5:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            got = [r.key for records in batch.values() for r in records]
            keys += got
            idle = 0 if got else idle + 1
        return keys
    finally:
        await consumer.stop()


def start(topics: Topics, port: int, data_dir: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "EOS_GROUP": topics.group,
        "EOS_INPUT": topics.input,
        "EOS_OUTPUT": topics.output,
        "EOS_WEB_PORT": str(port),
        "EOS_DATA_DIR": data_dir,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "bench.eos_app", "worker", "-l", "warn"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args(argv)
    n = args.records
    topics = Topics("eos")
    asyncio.run(_create(topics))
    produce(topics.input, 0, n)
    data_dir = tempfile.mkdtemp(prefix="eos-")
    first = start(topics, free_port(), data_dir)
    wait_for(
        lambda: count_records(BOOTSTRAP, topics.output) >= n // 3,
        300,
        interval=0.5,
        message="a third forwarded",
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    second = start(topics, free_port(), data_dir)
    try:
        # Committed outputs are all we count; give the restarted app time to finish.
        wait_for(
            lambda: len(set(asyncio.run(_read_committed(topics.output, 60)))) >= n,
            600,
            interval=5,
            message="every record forwarded (read_committed)",
        )
    except AssertionError as exc:
        print(exc, file=sys.stderr)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    keys = asyncio.run(_read_committed(topics.output, 60))
    counts = collections.Counter(keys)
    lost = n - len(counts)
    duplicated = sum(c - 1 for c in counts.values())
    written = count_records(BOOTSTRAP, topics.output)  # includes aborted transactions' records
    payload = {
        "machine": machine(),
        "records": n,
        "lost": lost,
        "duplicated": duplicated,
        "committed_outputs": len(keys),
        "output_offsets_written": written,
    }
    md = (
        "# Faust exactly_once under SIGKILL\n\n"
        f"{n:,} keyed records, 4 co-partitioned partitions, the app SIGKILLed after a third and "
        "restarted; counted by a read_committed consumer.\n\n"
        + markdown_table(
            ["records", "lost", "duplicated (committed)", "offsets written"],
            [[n, lost, duplicated, written]],
        )
    )
    write_results("exactly_once", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
