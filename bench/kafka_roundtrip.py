"""aiokafka against the local broker: produce N records, then consume them.

python -m bench.kafka_roundtrip [--records N]   (writes bench/results/kafka_roundtrip.{md,json})
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._common import machine, markdown_table, write_results
from bench.stream import BOOTSTRAP
from support.harness import Topics


async def roundtrip(n: int) -> dict[str, float]:
    topic = Topics("roundtrip").input
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    payloads = [b'{"id": "r-%d", "x": %d.5}' % (i, i % 13) for i in range(n)]
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    await producer.start()
    t0 = time.perf_counter()
    futures = [await producer.send(topic, p, key=p[7:16]) for p in payloads]
    await asyncio.gather(*futures)
    t_produce = time.perf_counter() - t0
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    t1 = time.perf_counter()
    got = 0
    while got < n:
        for records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
            got += len(records)
    t_consume = time.perf_counter() - t1
    await consumer.stop()
    return {
        "produce_records_per_second": n / t_produce,
        "consume_records_per_second": n / t_consume,
        "round_trip_records_per_second": n / (t_produce + t_consume),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args(argv)
    rates = asyncio.run(roundtrip(args.records))
    md = (
        "# aiokafka round trip against the local broker\n\n"
        f"{args.records:,} records of ~30 bytes, 2 partitions, acks=all, linger 5 ms.\n\n"
        + markdown_table(
            ["produce (rec/s)", "consume (rec/s)", "round trip (rec/s)"],
            [
                [
                    rates["produce_records_per_second"],
                    rates["consume_records_per_second"],
                    rates["round_trip_records_per_second"],
                ]
            ],
        )
    )
    write_results("kafka_roundtrip", {"machine": machine(), "records": args.records, **rates}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
