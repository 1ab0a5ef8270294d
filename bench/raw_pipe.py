"""The baseline for bench/stream: a raw aiokafka consume-then-produce pipe, no parsing, no model.

It does what the worker does minus Faust and inference: read a batch, send every record on with
its key, wait for delivery, commit. Runs until stopped (SIGTERM).

    python -m bench.raw_pipe --bootstrap HOST:PORT --source T --dest T --group G [--max-batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def pipe(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=args.max_batch)
            futures = [
                await producer.send(args.dest, record.value, key=record.key)
                for records in batch.values()
                for record in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-batch", type=int, default=1024)
    asyncio.run(pipe(parser.parse_args()))


if __name__ == "__main__":
    main()
