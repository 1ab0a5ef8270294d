"""The two Kafka clients on the worker's hot path, measured the way the worker uses them.

aiokafka (the worker's client: record batches per partition through `send_in_batches`,
`getmany` of up to 1,024 records) against confluent-kafka (librdkafka: `produce` per record
with a delivery callback, or `produce_batch` per partition and slice; `consume` of up to 1,024
records), on the same broker, the same
records (~40-byte JSON values with a key) and topics of 2 and 64 partitions, in interleaved
rounds. For each: records/s, and the CPU it costs the process per record (all its threads:
librdkafka's own threads do the network and batching work outside Python's GIL, aiokafka does
it on the event loop), which is what a worker that also decodes, classifies and encodes has
left for that work.

    python -m bench.clients [--records N] [--rounds R] [--partitions 2,64]

Writes bench/results/clients.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._common import machine, markdown_table, write_results
from kafka_common.batch_sender import send_in_batches

BOOTSTRAP = "127.0.0.1:9092"
BATCH = 1024
#: Slices unacknowledged at once (the worker's MAX_IN_FLIGHT batches).
IN_FLIGHT = 4


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"r-%d" % i, b'{"id": "r-%d", "x": %d.25}' % (i, i % 13)) for i in range(n)]


class Clock:
    """Wall time, process CPU time (every thread) and the calling thread's CPU time over a
    block. The calling thread is the one that holds the GIL for the application's own work
    (the worker's event loop): CPU spent there is taken from decoding, classifying and
    encoding; CPU on librdkafka's own threads runs beside it, on another core."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.caller = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.caller = time.thread_time() - self.caller


async def _create(topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def aiokafka_produce(topic: str, records: list[tuple[bytes, bytes]], parts: int) -> Clock:
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)
        with Clock() as clock:
            # As the worker: a slice at a time, up to IN_FLIGHT slices unacknowledged.
            in_flight: list[asyncio.Future] = []
            for start in range(0, len(records), BATCH):
                chunk = records[start : start + BATCH]
                sent: list[tuple[asyncio.Future, list]] = []
                for p in range(parts):
                    await send_in_batches(producer, topic, p, chunk[p::parts], sent)
                in_flight.append(asyncio.gather(*(future for future, _ in sent)))
                if len(in_flight) >= IN_FLIGHT:
                    await in_flight.pop(0)
            await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    return clock


async def aiokafka_consume(topic: str, n: int) -> Clock:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        got = 0
        while not got:  # joined and fetching: the clock starts at the first records
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            got = sum(len(v) for v in batches.values())
        with Clock() as clock:
            while got < n:
                batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
                for items in batches.values():
                    for r in items:
                        r.key, r.value, r.offset, r.partition, r.timestamp  # noqa: B018
                    got += len(items)
    finally:
        await consumer.stop()
    return clock


def _rdkafka_producer(topic: str) -> tuple[Any, list[int], Callable[[Any, Any], None]]:
    """An idempotent confluent-kafka producer that knows the topic, the count of records it
    delivered, and the delivery callback that keeps that count."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
        }
    )
    delivered = [0]

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[0] += 1

    producer.list_topics(topic, timeout=10)
    return producer, delivered, on_delivery


def rdkafka_produce(topic: str, records: list[tuple[bytes, bytes]], parts: int) -> Clock:

    producer, delivered, on_delivery = _rdkafka_producer(topic)
    with Clock() as clock:
        for i, (key, value) in enumerate(records):
            deadline = None  # read the clock only when the queue is full
            while True:
                try:
                    producer.produce(
                        topic, value, key, partition=i % parts, on_delivery=on_delivery
                    )
                    break
                except BufferError:  # the queue is full: let deliveries drain it, a minute at most
                    deadline = deadline or time.monotonic() + 60
                    if time.monotonic() > deadline:
                        raise RuntimeError("produce: the queue stayed full for 60 s") from None
                    producer.poll(0.005)
            if i % BATCH == 0:
                producer.poll(0)
        producer.flush(60)
    assert delivered[0] == len(records), delivered
    return clock


def rdkafka_produce_batch(topic: str, records: list[tuple[bytes, bytes]], parts: int) -> Clock:
    """As `rdkafka_produce`, but one `produce_batch` call per partition and slice."""
    from confluent_kafka import KafkaError

    producer, delivered, on_delivery = _rdkafka_producer(topic)
    with Clock() as clock:
        for start in range(0, len(records), BATCH):
            chunk = records[start : start + BATCH]
            for p in range(parts):
                messages: list[dict[str, Any]] = [
                    {"key": k, "value": v} for k, v in chunk[p::parts]
                ]
                deadline = time.monotonic() + 60
                while messages:
                    try:
                        queued = producer.produce_batch(
                            topic, messages, partition=p, on_delivery=on_delivery
                        )
                    except BufferError:
                        queued = 0
                        for m in messages:
                            m["_error"] = KafkaError(KafkaError._QUEUE_FULL)
                    # What did not fit the queue carries an `_error`: only that is sent again,
                    # for a minute at most; any other error ends the run.
                    failed = (
                        [m for m in messages if "_error" in m] if queued < len(messages) else []
                    )
                    for m in failed:
                        if m["_error"].code() != KafkaError._QUEUE_FULL:
                            raise RuntimeError(f"produce_batch: {m['_error']}")
                    if failed and time.monotonic() > deadline:
                        raise RuntimeError("produce_batch: the queue stayed full for 60 s")
                    for m in failed:
                        del m["_error"]
                    messages = failed
                    if messages:
                        producer.poll(0.005)
            producer.poll(0)
        producer.flush(60)
    assert delivered[0] == len(records), delivered
    return clock


def rdkafka_consume(topic: str, n: int) -> Clock:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # As the worker's aiokafka consumer: an idle fetch is held 5 ms at most.
            "fetch.wait.max.ms": 5,
        }
    )
    consumer.subscribe([topic])
    try:
        got = 0
        while not got:
            got = len(consumer.consume(BATCH, 1.0))
        with Clock() as clock:
            while got < n:
                # consume() returns when it has BATCH records or at its timeout: a short one,
                # so that the last, partial batch does not add its wait to the clock.
                messages = consumer.consume(BATCH, 0.01)
                for m in messages:
                    m.key(), m.value(), m.offset(), m.partition(), m.timestamp()
                got += len(messages)
    finally:
        consumer.close()
    return clock


def one_round(n: int, partitions: int) -> list[dict[str, Any]]:
    records = _records(n)
    out = []
    runs: list[tuple[str, Callable[[str], Clock], Callable[[str], Clock]]] = [
        (
            "aiokafka",
            lambda t: asyncio.run(aiokafka_produce(t, records, partitions)),
            lambda t: asyncio.run(aiokafka_consume(t, n)),
        ),
        (
            "confluent-kafka",
            lambda t: rdkafka_produce(t, records, partitions),
            lambda t: rdkafka_consume(t, n),
        ),
        (
            "confluent-kafka batch",
            lambda t: rdkafka_produce_batch(t, records, partitions),
            lambda t: rdkafka_consume(t, n),
        ),
    ]
    for client, produce, consume in runs:
        topic = f"bench-clients-{uuid.uuid4().hex[:8]}"
        asyncio.run(_create(topic, partitions))
        p, c = produce(topic), consume(topic)
        row = {
            "client": client,
            "partitions": partitions,
            "records": n,
            "produce_records_per_second": n / p.wall,
            "produce_cpu_us_per_record": p.cpu / n * 1e6,
            "produce_caller_cpu_us_per_record": p.caller / n * 1e6,
            "consume_records_per_second": n / c.wall,
            "consume_cpu_us_per_record": c.cpu / n * 1e6,
            "consume_caller_cpu_us_per_record": c.caller / n * 1e6,
        }
        print(
            f"{client:16s} {partitions:3d} partitions: produce "
            f"{row['produce_records_per_second']:>9,.0f}"
            f"/s {row['produce_cpu_us_per_record']:.2f} us CPU; consume "
            f"{row['consume_records_per_second']:>9,.0f}/s {row['consume_cpu_us_per_record']:.2f}"
            " us CPU",
            file=sys.stderr,
        )
        out.append(row)
    return out


FIELDS = [
    "produce_records_per_second",
    "produce_cpu_us_per_record",
    "produce_caller_cpu_us_per_record",
    "consume_records_per_second",
    "consume_cpu_us_per_record",
    "consume_caller_cpu_us_per_record",
]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and worst (slowest, costliest) round per client and partition count."""
    out = []
    for key in sorted({(r["partitions"], r["client"]) for r in rows}):
        mine = [r for r in rows if (r["partitions"], r["client"]) == key]
        entry: dict[str, Any] = {"partitions": key[0], "client": key[1], "rounds": len(mine)}
        for f in FIELDS:
            values = [r[f] for r in mine]
            worst = min(values) if f.endswith("per_second") else max(values)
            entry[f] = {"median": statistics.median(values), "worst": worst}
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", default="2,64")
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.partitions.split(",")]
    rows = []
    for _ in range(args.rounds):
        for partitions in counts:
            rows += one_round(args.records, partitions)
    summary = summarize(rows)
    md = (
        "# The Kafka clients on the worker's hot path\n\n"
        f"{args.records:,} records (~40-byte JSON values, keyed) per run, one broker on loopback, "
        "acks=all, idempotent producers, read_committed consumers; "
        f"medians of {args.rounds} interleaved rounds, worst round in brackets. CPU is the "
        "process's (every thread) per record; caller-thread CPU is the calling thread's alone, "
        "the one that also runs the application's own Python work (librdkafka's network and "
        "batching threads run beside it). aiokafka as the worker uses it (record batches "
        "per partition, `getmany` of 1,024); confluent-kafka (librdkafka) `produce` per record "
        "with a delivery callback, or `produce_batch` per partition and slice of 1,024 "
        '("confluent-kafka batch"; its consume is the same), `consume` of 1,024.\n\n'
        + markdown_table(
            [
                "client",
                "partitions",
                "produce rec/s",
                "produce CPU us/rec",
                "produce caller-thread CPU us/rec",
                "consume rec/s",
                "consume CPU us/rec",
                "consume caller-thread CPU us/rec",
            ],
            [
                [
                    e["client"],
                    e["partitions"],
                    *(f"{e[f]['median']:,.2f} ({e[f]['worst']:,.2f})" for f in FIELDS),
                ]
                for e in summary
            ],
        )
    )
    write_results(
        "clients",
        {"machine": machine(), "records": args.records, "rows": rows, "summary": summary},
        md,
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
