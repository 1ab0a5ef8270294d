"""End-to-end throughput and latency through the real broker, worker vs a raw pipe.

For each system (the raw aiokafka pipe of bench/raw_pipe.py, and the worker at several batch
settings), on topics of its own:
  1. drain: N records are preloaded, the system starts, and throughput is the rate at which
     outputs were appended (broker LogAppendTime) from the first to the last;
  2. latency: records are produced at half of that system's drain rate for a few seconds, and
     each record's latency is its output's append time minus the input's create time.
All systems run in one benchmark run against the same broker (start it with `make kafka-up`).
Writes bench/results/stream.{md,json,png}.

    python -m bench.stream [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._common import RESULTS, machine, markdown_table, write_results
from kafka_common.batch_sender import BatchSender, send_paced
from support.harness import (
    SEED_MODEL,
    Topics,
    Worker,
    consume,
    count_records,
    free_port,
    publish_model,
    wait_for,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PARTITIONS = 2
WORKER_CONFIGS = [(256, 5.0), (1024, 20.0), (4096, 50.0)]
#: The latency target: p99 end-to-end within the setting's max delay plus this (ms).
BUDGET_SLACK_MS = 20.0


async def _create_topics(topics: Topics, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        append_time = {"message.timestamp.type": "LogAppendTime"}
        await admin.create_topics(
            [
                NewTopic(topics.input, partitions, 1),
                NewTopic(topics.output, partitions, 1, topic_configs=append_time),
                NewTopic(topics.dlq, 1, 1),
                NewTopic(topics.params, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
    finally:
        await admin.close()


async def _produce(topic: str, start: int, n: int, rate: float | None) -> None:
    rng = np.random.default_rng(start)
    xs = np.where(rng.random(n) < 0.4, rng.normal(0.5, 1, n), rng.normal(11, 1, n))
    records = [
        (f"r-{start + i}".encode(), json.dumps({"id": f"r-{start + i}", "x": float(x)}).encode())
        for i, x in enumerate(xs)
    ]
    # Encoded ahead and sent as record batches per tick: the load generator shares the CPUs
    # with the broker and the system under test, so it should cost them as little as possible.
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        await send_paced(BatchSender(producer, by_key=False), topic, records, rate=rate or 0.0)
    finally:
        await producer.stop()


def produce(topic: str, start: int, n: int, rate: float | None = None) -> None:
    asyncio.run(_produce(topic, start, n, rate))


def create_topics(topics: Topics, partitions: int = PARTITIONS) -> None:
    asyncio.run(_create_topics(topics, partitions))


def drain_rate(topic: str, n: int) -> float:
    """Records per second from the first to the last output (broker append times)."""
    out = consume(BOOTSTRAP, topic, n, timeout=120)
    appended = np.sort([r.timestamp / 1000 for r in out])
    return (len(appended) - 1) / max(appended[-1] - appended[0], 1e-3)


def drain_with_workers(
    n_workers: int, n: int, log_dir: pathlib.Path, partitions: int = PARTITIONS, stem: str = "drain"
) -> float:
    """Drain rate of n preloaded records by n_workers workers in one group."""
    topics = Topics(f"{stem}{n_workers}")
    create_topics(topics, partitions)
    publish_model(BOOTSTRAP, topics.params, SEED_MODEL)
    produce(topics.input, 0, n)
    workers = [
        Worker(BOOTSTRAP, topics, log_dir, GMM_LOG_LEVEL="warn").start() for _ in range(n_workers)
    ]
    try:
        wait_for(
            lambda: count_records(BOOTSTRAP, topics.output) >= n,
            900,
            interval=0.5,
            message=f"{n_workers} worker(s) draining",
        )
    finally:
        for w in workers:
            w.stop()
    return drain_rate(topics.output, n)


def input_times(topic: str, n: int) -> dict[bytes, float]:
    return {r.key: r.timestamp / 1000 for r in consume(BOOTSTRAP, topic, n, timeout=120)}


def measure(
    name: str,
    topics: Topics,
    start_system: Any,
    n_drain: int,
    latency_seconds: float,
    max_delay_ms: float | None,
) -> dict[str, Any]:
    create_topics(topics)
    produce(topics.input, 0, n_drain)
    proc = start_system(topics)
    try:
        wait_for(
            lambda: count_records(BOOTSTRAP, topics.output) >= n_drain,
            600,
            interval=0.5,
            message=f"{name}: drain",
        )
        rate_out = drain_rate(topics.output, n_drain)
        rate = rate_out / 2
        n_lat = int(rate * latency_seconds)
        produce(topics.input, n_drain, n_lat, rate=rate)
        total = n_drain + n_lat
        wait_for(
            lambda: count_records(BOOTSTRAP, topics.output) >= total,
            300,
            interval=0.5,
            message=f"{name}: latency run",
        )
    finally:
        proc.stop()
    sent = input_times(topics.input, total)
    outputs = consume(BOOTSTRAP, topics.output, total, timeout=120)
    lat = (
        np.array(
            [
                r.timestamp / 1000 - sent[r.key]
                for r in outputs
                if int(r.key.decode().split("-")[1]) >= n_drain
            ]
        )
        * 1000
    )
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    result = {
        "system": name,
        "max_delay_ms": max_delay_ms,
        "drain_records": n_drain,
        "throughput_records_per_second": rate_out,
        "latency_load_records_per_second": rate,
        "latency_records": len(lat),
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": float(lat.max())},
    }
    print(
        f"{name}: {rate_out:,.0f} records/s; at {rate:,.0f}/s p50 {p50:.1f} ms p99 {p99:.1f} ms",
        file=sys.stderr,
    )
    return result


class RawPipe:
    def __init__(
        self, topics: Topics, max_batch: int, per_record: bool = False, json: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.raw_pipe",
                "--bootstrap",
                BOOTSTRAP,
                "--source",
                topics.input,
                "--dest",
                topics.output,
                "--group",
                topics.group,
                "--max-batch",
                str(max_batch),
                *(["--per-record"] if per_record else []),
                *(["--json"] if json else []),
            ]
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class FaustPipe:
    def __init__(self, topics: Topics, log_dir: pathlib.Path) -> None:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
            "GMM_INPUT_TOPIC": topics.input,
            "GMM_OUTPUT_TOPIC": topics.output,
            "GMM_CONSUMER_GROUP": topics.group,
            "GMM_WORKER_WEB_PORT": str(free_port()),
            "GMM_WORKER_DATA_DIR": str(log_dir / topics.group),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "bench.faust_pipe", "worker", "-l", "warn"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def start_worker(max_batch: int, max_delay_ms: float, log_dir: pathlib.Path, **env: str) -> Any:
    def start(topics: Topics) -> Worker:
        publish_model(BOOTSTRAP, topics.params, SEED_MODEL)
        worker = Worker(
            BOOTSTRAP,
            topics,
            log_dir,
            GMM_MAX_BATCH=str(max_batch),
            GMM_MAX_DELAY_MS=str(max_delay_ms),
            GMM_LOG_LEVEL="warn",
            **env,
        ).start()
        worker.wait_ready()
        return worker

    return start


def systems(configs: list[tuple[int, float]], log_dir: pathlib.Path) -> list[tuple]:
    """(name, topic stem, starter, max delay) of every system under test, baselines first."""
    out: list[tuple] = [
        ("raw aiokafka pipe (batch 1024)", "raw", lambda t: RawPipe(t, 1024), None),
        (
            "raw aiokafka pipe, per-record send (batch 1024)",
            "rawpr",
            lambda t: RawPipe(t, 1024, per_record=True),
            None,
        ),
        (
            "JSON pipe: decode and encode JSON per record, no model (batch 1024)",
            "jpipe",
            lambda t: RawPipe(t, 1024, json=True),
            None,
        ),
        ("Faust pipe, no model (batch 1024)", "fpipe", lambda t: FaustPipe(t, log_dir), None),
    ]
    for max_batch, delay in configs:
        name = f"worker batch {max_batch}, delay {delay:g} ms"
        out.append((name, f"w{max_batch}", start_worker(max_batch, delay, log_dir), delay))
    return out


def summarize(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over rounds; each ratio is taken against the raw pipe of the same round."""
    summary = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds]
        ratios = [
            r[i]["throughput_records_per_second"] / r[0]["throughput_records_per_second"]
            for r in rounds
        ]
        summary.append(
            {
                "system": first["system"],
                "max_delay_ms": first["max_delay_ms"],
                "p99_budget_ms": (
                    None
                    if first["max_delay_ms"] is None
                    else first["max_delay_ms"] + BUDGET_SLACK_MS
                ),
                "throughput_records_per_second": float(
                    np.median([x["throughput_records_per_second"] for x in runs])
                ),
                "throughput_vs_raw": float(np.median(ratios)),
                "throughput_vs_raw_range": [float(min(ratios)), float(max(ratios))],
                "latency_load_records_per_second": float(
                    np.median([x["latency_load_records_per_second"] for x in runs])
                ),
                "latency_ms": {
                    q: float(np.median([x["latency_ms"][q] for x in runs]))
                    for q in ("p50", "p95", "p99", "max")
                },
                "p99_ms_range": [
                    float(min(x["latency_ms"]["p99"] for x in runs)),
                    float(max(x["latency_ms"]["p99"] for x in runs)),
                ],
            }
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, one worker setting")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every system")
    args = parser.parse_args(argv)
    n_drain, seconds = (40_000, 4.0) if args.quick else (200_000, 8.0)
    rounds_n = 1 if args.quick else args.rounds
    configs = WORKER_CONFIGS[1:2] if args.quick else WORKER_CONFIGS
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-stream-"))

    # Rounds interleave the systems, so a slow spell of the shared machine hits all of them.
    rounds = []
    for _ in range(rounds_n):
        rounds.append(
            [
                measure(name, Topics(stem), start, n_drain, seconds, delay)
                for name, stem, start, delay in systems(configs, log_dir)
            ]
        )
    results = summarize(rounds)
    rows = []
    for r in results:
        lat = r["latency_ms"]
        budget = "" if r["p99_budget_ms"] is None else f"{r['p99_budget_ms']:g}"
        lo, hi = r["throughput_vs_raw_range"]
        p_lo, p_hi = r["p99_ms_range"]
        rows.append(
            [
                r["system"],
                r["throughput_records_per_second"],
                f"{r['throughput_vs_raw']:.2f} ({lo:.2f}-{hi:.2f})",
                r["latency_load_records_per_second"],
                lat["p50"],
                lat["p95"],
                f"{lat['p99']:.0f} ({p_lo:.0f}-{p_hi:.0f})",
                budget,
            ]
        )
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "drain_records": n_drain,
        "latency_seconds": seconds,
        "rounds": rounds,
        "results": results,
    }
    md = (
        "# Stream throughput and latency through the real broker\n\n"
        f"One broker (Kafka 4.0.2, KRaft) on loopback, {PARTITIONS} partitions, "
        f"{payload['machine']['cpus']} CPUs shared by the broker, the load generator and the "
        "system under test. Throughput: drain rate of a preloaded backlog of "
        f"{n_drain:,} records. Latency: output append time minus input create time, at half of "
        f"that system's drain rate, for {seconds:g} s. Medians of {rounds_n} interleaved "
        "round(s), with the range in brackets; each ratio is against the raw pipe of its own "
        "round.\n\n"
        + markdown_table(
            [
                "system",
                "records/s",
                "vs raw pipe",
                "latency load (rec/s)",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p99 budget ms (delay + 20)",
            ],
            rows,
        )
        + "\n![stream](stream.png)\n"
    )
    write_results("stream", payload, md)
    plot(results)
    print(md)
    return 0


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["system"].replace(", ", "\n") for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    a.bar(names, [r["throughput_records_per_second"] for r in results], color="C0")
    a.set_ylabel("records / second")
    a.set_title("Drain throughput")
    x = np.arange(len(results))
    for i, q in enumerate(("p50", "p95", "p99")):
        b.bar(x + (i - 1) * 0.27, [r["latency_ms"][q] for r in results], 0.27, label=q)
    b.set_xticks(x, names)
    b.set_ylabel("ms")
    b.set_title("End-to-end latency at half of peak")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "stream.png")


if __name__ == "__main__":
    sys.exit(main())
