"""Windows past memory: the trainer's window read from Kafka in chunks, then fitted (D=8).

For each window size N (1M and 10M records by default), N points of bench.fit's D=8, K=4 mixture
are produced (confluent-kafka, lz4, 4 partitions) to a topic of their own on the local broker.
Then, each in a new process, so that its peak RSS (VmHWM: the kernel's exact high-water mark
of the process's memory) is its own:
  - `read`: `trainer.window.read_window` (chunks of records decoded in a thread into arrays),
    twice (the trainer's first cycle, then every later one): seconds, records/s, peak RSS;
  - `readers`: the same read by READERS reader processes (`GMM_TRAIN_READERS`,
    `trainer.window_readers`), each some of the partitions, as the trainer's run loop reads:
    a first read that starts its readers, then (`trainer.reader_pool`: the next read's readers
    started after a cycle, untimed) a read that finds them waiting, the rate of every later
    cycle; peak RSS of the trainer's process and of the largest reader (of the first read:
    a reader started later, from a process that holds a window, would count that process's
    memory in its own peak);
  - `per-record read` (N <= 1M; a baseline in the same run): what the reader did before it read
    in chunks: each record decoded by `decode_point` on the event loop and kept as a small array
    with its timestamp, all merged and sorted at the end;
  Reads run READ_ROUNDS rounds, interleaved (read, readers, per-record, read, ...);
  - `read + fit`: the window read, then the trainer's cold fit (K=4 full, 10 starts as in
    bench.fit): fit seconds, points/s, peak RSS of the whole process up to the fit's end (the
    log-likelihood is computed after, in blocks), mean log-likelihood;
  - `one-array fit`: the same points generated in memory (in the topic's order) and fitted by
    `fit_map` directly (no Kafka): its log-likelihood is the reference the window's fit must
    equal (the window holds them merged by timestamp, an order only the scoring sample sees).
Start the broker first (`make kafka-up`). Writes bench/results/window.{md,json}.

    python -m bench.window [--sizes 1000000,10000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench._common import machine, markdown_table, write_results

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PARTITIONS = 4
SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (100_000,)
#: Sizes up to this also run the per-record baseline (it holds ~0.3 KB a record).
BASELINE_MAX = 1_000_000
RESTARTS = 10
#: Reader processes of the `readers` read (GMM_TRAIN_READERS).
READERS = 2
#: Rounds of each read (this VM's read rates move by up to 2x from run to run): every round's
#: rate is kept, the table shows the median and the worst.
READ_ROUNDS = 3

# Each measurement is a process of its own: its VmHWM is its peak alone.
CHILD = r"""
import asyncio, json, sys, time
import numpy as np
what, topic, n, bootstrap, restarts, readers = sys.argv[1:7]
n, restarts, readers = int(n), int(restarts), int(readers)
out = {}

def peak():
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def readers_peak():
    # The largest peak of any reader process this one waited for (kB on Linux).
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

def loglik(x, params):
    # In blocks: the whole window's per-component densities at once would be the peak.
    from mixture.evaluate import log_likelihood
    total = sum(float(log_likelihood(x[i : i + 65536], params).sum())
                for i in range(0, len(x), 65536))
    return total / len(x)

def fit(x):
    import jax
    from mixture.fit import FitConfig, fit_map
    config = FitConfig(4, "full", n_init=restarts)
    t = time.perf_counter()
    result = fit_map(x, jax.random.PRNGKey(0), config)
    seconds = time.perf_counter() - t
    out.update(fit_seconds=seconds, points_per_second=len(x) / seconds,
               fit_peak_rss_bytes=peak(), fit_steps=result.n_steps)
    out["loglik"] = loglik(x, result.params)

if what == "one_array":
    from bench.window import points
    x = np.concatenate(list(points(n)))  # the points the topic holds, in the same order
    fit(x)
else:
    # Imported before any clock starts: a trainer imports them once, not at every read.
    import aiokafka, mixture.points, kafka_common.topics
    from kafka_common.settings import KafkaSettings
    from bench.window import per_record_window
    from trainer.reader_pool import ReaderPool
    from trainer.window import read_window
    kafka = KafkaSettings(bootstrap_servers=bootstrap)

    async def read_with_readers():
        # The trainer's run loop: its first read starts the readers; after each cycle it
        # starts the next read's (ReaderPool.refill), so every later read finds them waiting.
        pool = ReaderPool(kafka, readers)
        try:
            t = time.perf_counter()
            first = await read_window(kafka, topic, n, dim=8, deadline_s=3600, pool=pool)
            out["first_read_seconds"] = time.perf_counter() - t
            out["first_records_per_second"] = n / out["first_read_seconds"]
            # The readers' peak is taken from these: the next ones start from this process
            # when it holds a window, and a child's peak (ru_maxrss) counts its parent's
            # resident memory at the moment it was started (vfork, then exec).
            out["readers_peak_rss_bytes"] = readers_peak()
            del first  # as a cycle lets its window go before the next
            if not await pool.refill():
                raise RuntimeError("the standby readers did not start")
            t = time.perf_counter()
            window = await read_window(kafka, topic, n, dim=8, deadline_s=3600, pool=pool)
            return window.points, time.perf_counter() - t
        finally:
            await pool.close()

    t = time.perf_counter()
    if what == "per_record":
        points = asyncio.run(per_record_window(kafka, topic, n))
        seconds = time.perf_counter() - t
    elif what == "readers":
        points, seconds = asyncio.run(read_with_readers())
    elif what == "read":
        # Like the readers: the first read of the process, then the read of every later cycle.
        first = asyncio.run(read_window(kafka, topic, n, dim=8, deadline_s=3600))
        out["first_read_seconds"] = time.perf_counter() - t
        out["first_records_per_second"] = n / out["first_read_seconds"]
        del first
        t = time.perf_counter()
        points = asyncio.run(read_window(kafka, topic, n, dim=8, deadline_s=3600)).points
        seconds = time.perf_counter() - t
    else:  # read_fit: one read, then the fit
        points = asyncio.run(read_window(kafka, topic, n, dim=8, deadline_s=3600)).points
        seconds = time.perf_counter() - t
    out.update(read_seconds=seconds, records_per_second=n / seconds, points=len(points),
               read_peak_rss_bytes=peak())
    if what == "readers":
        out.update(readers=readers)
    if what == "read_fit":
        fit(points)
out["peak_rss_bytes"] = peak()
print(json.dumps(out))
"""


async def per_record_window(kafka: Any, topic: str, max_records: int) -> Any:
    """The reader before chunks (the baseline): every record decoded on the event loop as it
    arrives and kept as (timestamp, array), merged by timestamp at the end."""
    import numpy as np
    from aiokafka import AIOKafkaConsumer

    from kafka_common.topics import topic_partitions
    from mixture.points import PointError, decode_point

    consumer = AIOKafkaConsumer(**kafka.consumer_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - max_records))
        records: list[tuple[int, Any]] = []
        remaining = set(tps)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for items in batch.values():
                for r in items:
                    try:
                        x = np.array(decode_point(r.value, 8).x, dtype=np.float64)
                    except PointError:
                        continue
                    records.append((r.timestamp, x))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    records.sort(key=lambda item: item[0])
    return np.array([x for _, x in records[-max_records:]])


def points(n: int) -> Iterator[Any]:
    """bench.fit's D=8 mixture's n points, in blocks of a million (each block its own seed)."""
    from bench._common import sample
    from bench.fit import _truth_8d

    for start in range(0, n, 1_000_000):
        yield sample(_truth_8d(), min(1_000_000, n - start), (0, start))


def produce(n: int) -> str:
    """A topic of its own holding n points of bench.fit's D=8 mixture; returns its name."""
    import orjson
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-window-{n}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    producer = Producer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    start = 0
    for x in points(n):
        for i, row in enumerate(x.tolist(), start):
            while True:
                try:
                    producer.produce(
                        topic, orjson.dumps({"id": i, "x": row}), partition=i % PARTITIONS
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
        producer.poll(0)
        start += len(x)
    if producer.flush(120) != 0:
        raise RuntimeError("records still undelivered after 120 s")
    return topic


def run(what: str, topic: str, n: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, what, topic, str(n), BOOTSTRAP, str(RESTARTS), str(READERS)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} at {n}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def delete(topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # held until the deletion is done
    admin.delete_topics([topic])[topic].result()


def _rates(rounds: list[dict[str, Any]], field: str = "records_per_second") -> tuple[float, float]:
    """(median, worst) records/s over a read's rounds."""
    rates = sorted(r[field] for r in rounds)
    return float(statistics.median(rates)), rates[0]


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for r in payload["rows"]:
        reads, fit, one = r["reads"], r["read_fit"], r["one_array"]
        read, readers, base = reads["read"], reads["readers"], reads.get("per_record")
        mid, worst = _rates(read)
        r_mid, r_worst = _rates(readers)
        f_mid, f_worst = _rates(readers, "first_records_per_second")
        first_mid, first_worst = _rates(read, "first_records_per_second")
        b_mid = _rates(base)[0] if base else None
        rows.append(
            [
                f"{r['n']:,}",
                f"{mid:,.0f} ({worst:,.0f})",
                f"{first_mid:,.0f} ({first_worst:,.0f})",
                f"{r_mid:,.0f} ({r_worst:,.0f})",
                f"{f_mid:,.0f} ({f_worst:,.0f})",
                r_mid / mid,
                f"{b_mid:,.0f}" if b_mid else "-",
                max(x["read_peak_rss_bytes"] for x in read) / 2**30,
                f"{max(x['read_peak_rss_bytes'] for x in readers) / 2**30:.2f} + "
                f"{max(x['readers_peak_rss_bytes'] for x in readers) / 2**30:.2f}",
                max(x["read_peak_rss_bytes"] for x in base) / 2**30 if base else "-",
                fit["fit_seconds"],
                fit["points_per_second"],
                fit["fit_peak_rss_bytes"] / 2**30,
                f"{fit['loglik']:.6f}",
                f"{one['loglik']:.6f}",
                one["fit_peak_rss_bytes"] / 2**30,
            ]
        )
    table = markdown_table(
        [
            "records (D=8)",
            "one process, later cycles: rec/s, median (worst)",
            "one process, first cycle",
            f"{payload['readers']} readers waiting (later cycles)",
            f"{payload['readers']} readers started by the read (first cycle)",
            "readers / one process (later cycles)",
            "per-record read rec/s (median)",
            "read peak RSS (GiB)",
            "readers: trainer + largest reader peak RSS (GiB)",
            "per-record peak RSS (GiB)",
            "fit s",
            "fit points/s",
            "read + fit peak RSS (GiB)",
            "loglik/pt (window)",
            "loglik/pt (one array)",
            "one-array peak RSS (GiB)",
        ],
        rows,
    )
    return (
        "# Windows past memory\n\n"
        f"`python -m bench.window` on {payload['machine']['cpus']} CPUs: N points of bench.fit's "
        f"D=8, K=4 mixture on a topic of {PARTITIONS} partitions (lz4), read by the trainer's "
        f"reader alone and with {payload['readers']} reader processes "
        f"(`GMM_TRAIN_READERS={payload['readers']}`), then a cold K=4 full fit of "
        f"{RESTARTS} starts. Each read round is a process that reads twice, as the trainer's "
        "run loop does: its first cycle, then every later one (with readers, the first read "
        "starts its reader processes; after it the next read's are started, untimed, as after "
        "a cycle, `ReaderPool.refill`, and the second read finds them waiting). Clocks start "
        "after the imports (a trainer imports once). Peak RSS of the readers: the first read's "
        "(a reader started from a process that holds a window counts that process's memory in "
        "its own peak). Every figure is a process of its own; peak RSS is its VmHWM "
        "(the whole process: Python, JAX and the data). The per-record read is the reader "
        f"before chunks, in the same run. Reads: {payload['read_rounds']} interleaved rounds "
        "each (median and worst); the fits: one round.\n\n" + table
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help="comma-separated window sizes")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_SIZES}")
    args = parser.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else (QUICK_SIZES if args.quick else SIZES)
    )
    rows = []
    for n in sizes:
        t = time.perf_counter()
        topic = produce(n)
        row: dict[str, Any] = {"n": n, "produce_seconds": time.perf_counter() - t}
        print(f"{n:,}: produced in {row['produce_seconds']:.1f} s", flush=True)
        try:
            reads: dict[str, list[dict[str, Any]]] = {"read": [], "readers": []}
            if n <= BASELINE_MAX:
                reads["per_record"] = []
            for _ in range(READ_ROUNDS):
                for what, rounds in reads.items():
                    rounds.append(run(what, topic, n))
                    print(f"{n:,} {what}: {rounds[-1]}", flush=True)
            row["reads"] = reads
            for what in ("read_fit", "one_array"):
                row[what] = run(what, topic, n)
                print(f"{n:,} {what}: {row[what]}", flush=True)
        finally:
            delete(topic)
        rows.append(row)
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "restarts": RESTARTS,
        "readers": READERS,
        "read_rounds": READ_ROUNDS,
        "rows": rows,
    }
    print(write_results("window", payload, markdown(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
