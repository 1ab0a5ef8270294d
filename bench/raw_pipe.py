"""The baseline for bench/stream: a raw aiokafka consume-then-produce pipe, no parsing, no model.

It does what the worker does minus Faust, parsing and inference: read a batch, send every record
on with its key, wait for delivery, commit. By default it sends as the worker does: record
batches per partition, each output on its input's partition (kafka_common.batch_sender).
`--per-record` sends record by record with `AIOKafkaProducer.send`, the plain client idiom.
`--json` also decodes each record's JSON and encodes a small JSON answer (its id, x and source),
as the least any service answering JSON with JSON does: the floor for a Python worker.
Runs until stopped (SIGTERM).

    python -m bench.raw_pipe --bootstrap HOST:PORT --source T --dest T --group G [--max-batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from bench.rdkafka_pipe import add_compression
from kafka_common import zstd_level
from kafka_common.batch_sender import BatchSender


async def pipe(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    if args.compression == "zstd" and args.compression_level is not None:
        zstd_level.install(args.compression_level)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=None if args.compression == "none" else args.compression,
    )
    await consumer.start()
    await producer.start()
    sender = BatchSender(producer)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=args.max_batch)
            if args.per_record:
                futures = [
                    await producer.send(args.dest, record.value, key=record.key)
                    for records in batch.values()
                    for record in records
                ]
            else:
                records = [r for records in batch.values() for r in records]
                values = [_answer(r) for r in records] if args.json else [r.value for r in records]
                futures = await sender.send(
                    args.dest,
                    [(r.key, v) for r, v in zip(records, values, strict=True)],
                    [r.partition for r in records],
                )
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def _answer(r: ConsumerRecord) -> bytes:
    doc = orjson.loads(r.value)
    source = {"topic": r.topic, "partition": r.partition, "offset": r.offset}
    return orjson.dumps({"id": doc.get("id"), "x": doc.get("x"), "source": source})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-batch", type=int, default=1024)
    add_compression(parser)
    parser.add_argument("--per-record", action="store_true", help="send record by record")
    parser.add_argument("--json", action="store_true", help="decode and encode JSON per record")
    asyncio.run(pipe(parser.parse_args()))


if __name__ == "__main__":
    main()
