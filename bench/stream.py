"""End-to-end throughput and latency through the real broker: the worker against baselines.

The systems, each on topics of its own (`--systems` picks some by key):
  rdkafka        the worker's job hand-written on confluent-kafka (bench/rdkafka_pipe.py), batch
                 1,024: the baseline every ratio is taken against
  rdkafka-256    the same pipe at batch 256: worker-256's like-for-like baseline (the table's
                 "same batch" column; worker-1024's is `rdkafka`)
  raw            the raw aiokafka pipe of bench/raw_pipe.py (no parsing, no model)
  raw-per-record the same, sending record by record
  json           the same, decoding and encoding JSON per record (no model)
  quix           the worker's job as a Quix Streams app (bench/quix_pipe.py); skipped, with a
                 line saying so, where quixstreams cannot be imported (`make venv-quix`)
  faust          a Faust agent that only moves records (bench/faust_pipe.py)
  worker-N       the worker at max batch N (256, 1024, 4096) and its max delay

For each system, at each partition count (`--partitions 2,12,64`), on input and output topics
that both stamp records with the broker's LogAppendTime:
  1. drain: N records are preloaded, the system starts, and throughput is the rate at which
     outputs were appended from the first to the last;
  2. latency: records are produced at half of that system's drain rate for a few seconds, then
     at each fixed load (`--loads`, records/s; a load above the system's drain rate is not run:
     "saturated"); a record's latency is its output's append time minus its input's append
     time (joined by the key, which every system keeps).
Rounds interleave every system at every partition count, so that a slow spell of the shared
machine hits all of them; each ratio is taken against the rdkafka pipe (and the Quix app) of the
same round and partition count, and each worker setting's against the pipe of its batch size
where one ran. Every system writes its outputs in record batches compressed
with the same codec (`--compression`; by default the worker's, GMM_OUTPUT_COMPRESSION's zstd, at
the worker's GMM_OUTPUT_ZSTD_LEVEL), so each moves the same bytes. All against the same broker
(`make kafka-up`). Writes bench/results/stream.{md,json,png} (`--quick`: a temporary directory,
unless `--out`).

    python -m bench.stream [--quick] [--partitions 2,12,64] [--loads 5000,20000]
        [--systems rdkafka,worker-1024] [--rounds N] [--compression CODEC] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench._common import RESULTS, machine, markdown_table, write_results
from kafka_common.batch_sender import BatchSender, send_paced
from kafka_common.settings import COMPRESSIONS, KafkaSettings
from support.harness import (
    ROOT,
    SEED_MODEL,
    Topics,
    Worker,
    consume,
    count_records,
    delete_topics,
    free_port,
    publish_model,
    wait_for,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
#: The partition count of a run that names none (and of bench/codecs.py's runs).
PARTITIONS = 2
WORKER_CONFIGS = [(256, 5.0), (1024, 20.0), (4096, 50.0)]
#: Fixed offered loads of the latency phase (records/s), besides half of each drain rate.
LOADS = (5000.0, 20000.0)
#: The worker's default output codec, which every system uses unless --compression says.
OUTPUT_COMPRESSION = KafkaSettings().output_compression
#: The worker's default zstd level, which every system compresses zstd batches at (the worker
#: too, whatever GMM_OUTPUT_ZSTD_LEVEL is set to). Other codecs run at each client's default.
ZSTD_LEVEL = KafkaSettings().output_zstd_level
#: The latency target: p99 end-to-end within the setting's max delay plus this (ms).
BUDGET_SLACK_MS = 10.0
#: The interpreter that runs the Quix app: quixstreams cannot share the dev venv (it requires
#: confluent-kafka < 2.13), so `make venv-quix` builds one of its own.
QUIX_PYTHON = os.environ.get("BENCH_QUIX_PYTHON", str(ROOT / ".venv-quix" / "bin" / "python"))
#: The baselines ratios are taken against, by system key.
RDKAFKA, QUIX, RAW = "rdkafka", "quix", "raw"
BASELINES = (RDKAFKA, QUIX)
#: A worker setting's like-for-like baseline, where a run has it: the rdkafka pipe at the same
#: batch size (the issue's baseline, `rdkafka`, always reads batches of 1,024).
SAME_BATCH = {"worker-256": "rdkafka-256", "worker-1024": RDKAFKA}


async def _create_topics(topics: Topics, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        # Both ends stamped by the broker: latency is append to append, whatever the clients'
        # own batching (the load generator's included).
        append_time = {"message.timestamp.type": "LogAppendTime"}
        await admin.create_topics(
            [
                NewTopic(topics.input, partitions, 1, topic_configs=append_time),
                NewTopic(topics.output, partitions, 1, topic_configs=append_time),
                NewTopic(topics.dlq, 1, 1),
                NewTopic(topics.params, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
    finally:
        await admin.close()
    # The controller answers before every partition's log is up on the broker: the first
    # produce to a fresh topic of many partitions would be refused (NotLeaderForPartition) and
    # retried inside the preload. Listing every partition's end offset waits until they are.
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    # aiokafka#647: a consumer stopped before its no-group task first ran raises CancelledError.
    await asyncio.sleep(0)
    try:
        await asyncio.wait_for(
            consumer.end_offsets(
                [
                    TopicPartition(t, p)
                    for t in (topics.input, topics.output)
                    for p in range(partitions)
                ]
            ),
            60,
        )
    finally:
        await consumer.stop()


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


def _index(key: bytes) -> int:
    return int(key.decode().split("-")[1])


def _quantiles(lat_ms: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(lat_ms.max())}


def _caught_up(name: str, proc: Any, topic: str, n: int, timeout: float, what: str) -> None:
    """Waits until topic holds n records; fails at once if the system's process died."""

    def done() -> bool:
        alive = getattr(proc, "alive", None)
        if alive is not None and not alive():
            raise AssertionError(f"{name}: the process exited during the {what}")
        return count_records(BOOTSTRAP, topic) >= n

    wait_for(done, timeout, interval=0.5, message=f"{name}: {what}")


def measure(
    name: str,
    topics: Topics,
    start_system: Any,
    n_drain: int,
    latency_seconds: float,
    max_delay_ms: float | None,
    loads: Sequence[float] = (),
    partitions: int = PARTITIONS,
) -> dict[str, Any]:
    """One system's drain rate, its latency at half of it, and at each fixed load (one run)."""
    t0 = time.monotonic()
    create_topics(topics, partitions)
    produce(topics.input, 0, n_drain)
    proc = start_system(topics)
    # (phase, first key index, records, target rate); a saturated load has no records.
    phases: list[tuple[str, int, int, float]] = []
    try:
        _caught_up(name, proc, topics.output, n_drain, 600, "drain")
        rate_out = drain_rate(topics.output, n_drain)
        total = n_drain
        for phase, rate in [("half", rate_out / 2), *((f"{x:g}", float(x)) for x in loads)]:
            if phase != "half" and rate > rate_out:
                phases.append((phase, total, 0, rate))
                continue
            n = max(int(rate * latency_seconds), 2)
            produce(topics.input, total, n, rate=rate)
            phases.append((phase, total, n, rate))
            total += n
            _caught_up(name, proc, topics.output, total, 300, f"latency run at {rate:,.0f}/s")
    finally:
        proc.stop()
    sent = input_times(topics.input, total)
    outputs = consume(BOOTSTRAP, topics.output, total, timeout=120)
    # Every system and round meets a broker of the same size: on one that kept every run's
    # topics, each client's metadata refresh (the measuring side's included) grows with them.
    delete_topics(BOOTSTRAP, topics)
    by_index = sorted(
        (_index(r.key), r.timestamp / 1000 - sent[r.key]) for r in outputs if r.key in sent
    )
    keys = np.array([i for i, _ in by_index])
    lat_all = np.array([x for _, x in by_index]) * 1000
    runs = []
    for phase, first, n, rate in phases:
        run: dict[str, Any] = {"load": phase, "target_records_per_second": rate}
        if n == 0:
            run["saturated"] = True
            runs.append(run)
            continue
        chosen = (keys >= first) & (keys < first + n)
        appended = sorted(sent[f"r-{i}".encode()] for i in range(first, first + n))
        run.update(
            saturated=False,
            # The load the generator achieved (it shares the CPUs), from the inputs' append times.
            offered_records_per_second=(n - 1) / max(appended[-1] - appended[0], 1e-3),
            records=int(chosen.sum()),
            latency_ms=_quantiles(lat_all[chosen]),
        )
        runs.append(run)
    half = runs[0]
    result = {
        "system": name,
        "max_delay_ms": max_delay_ms,
        "partitions": partitions,
        "drain_records": n_drain,
        "throughput_records_per_second": rate_out,
        "latency_load_records_per_second": half["target_records_per_second"],
        "latency_offered_records_per_second": half["offered_records_per_second"],
        "latency_records": half["records"],
        "latency_ms": half["latency_ms"],
        "loads": runs[1:],
        # The run's own time, topics to results (for planning a full run).
        "wall_seconds": time.monotonic() - t0,
    }
    at_loads = "".join(
        f"; at {r['load']}/s "
        + ("saturated" if r["saturated"] else f"p99 {r['latency_ms']['p99']:.1f} ms")
        for r in runs[1:]
    )
    print(
        f"{name} [{partitions} partitions]: {rate_out:,.0f} records/s; at "
        f"{half['target_records_per_second']:,.0f}/s p50 {half['latency_ms']['p50']:.1f} ms "
        f"p99 {half['latency_ms']['p99']:.1f} ms{at_loads}",
        file=sys.stderr,
    )
    return result


class Pipe:
    """A baseline process (`python -m MODULE ...`), stopped with SIGTERM."""

    def __init__(
        self, argv: list[str], python: str = sys.executable, quiet: bool = False, **kw: Any
    ) -> None:
        if quiet:
            kw.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = subprocess.Popen([python, *argv], cwd=ROOT, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _pipe_args(topics: Topics, compression: str) -> list[str]:
    level = ["--compression-level", str(ZSTD_LEVEL)] if compression == "zstd" else []
    return [
        *("--bootstrap", BOOTSTRAP),
        *("--compression", compression, *level),
        *("--source", topics.input),
        *("--dest", topics.output),
        *("--group", topics.group),
    ]


class RawPipe(Pipe):
    def __init__(
        self,
        topics: Topics,
        max_batch: int,
        per_record: bool = False,
        json: bool = False,
        compression: str = "none",
    ) -> None:
        super().__init__(
            [
                *("-m", "bench.raw_pipe", *_pipe_args(topics, compression)),
                *("--max-batch", str(max_batch)),
                *(["--per-record"] if per_record else []),
                *(["--json"] if json else []),
            ]
        )


class RdkafkaPipe(Pipe):
    def __init__(
        self, topics: Topics, params: pathlib.Path, max_batch: int, compression: str
    ) -> None:
        super().__init__(
            [
                *("-m", "bench.rdkafka_pipe", *_pipe_args(topics, compression)),
                *("--params", str(params), "--max-batch", str(max_batch)),
            ]
        )


class QuixPipe(Pipe):
    def __init__(
        self,
        topics: Topics,
        params: pathlib.Path,
        log_dir: pathlib.Path,
        python: str,
        compression: str,
    ) -> None:
        super().__init__(
            [
                *("-m", "bench.quix_pipe", *_pipe_args(topics, compression)),
                *("--params", str(params), "--state-dir", str(log_dir / f"quix-{topics.group}")),
            ],
            python=python,
            # Quix imports confluent-kafka's schema registry, whose authlib warns on import.
            env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
        )


class FaustPipe(Pipe):
    def __init__(self, topics: Topics, log_dir: pathlib.Path, compression: str) -> None:
        env = {
            **os.environ,
            "GMM_OUTPUT_COMPRESSION": compression,
            "GMM_OUTPUT_ZSTD_LEVEL": str(ZSTD_LEVEL),
            "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
            "GMM_INPUT_TOPIC": topics.input,
            "GMM_OUTPUT_TOPIC": topics.output,
            "GMM_CONSUMER_GROUP": topics.group,
            "GMM_WORKER_WEB_PORT": str(free_port()),
            "GMM_WORKER_DATA_DIR": str(log_dir / topics.group),
        }
        super().__init__(
            ["-m", "faust", "-A", "bench.faust_pipe", "worker", "-l", "warn"], quiet=True, env=env
        )


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


@dataclasses.dataclass(frozen=True)
class System:
    key: str  # what --systems names
    name: str  # what the tables say
    stem: str  # of its topics' names
    start: Callable[[Topics, int], Any]  # (topics, partitions) -> a process with stop()
    max_delay_ms: float | None = None  # a worker setting's, for its p99 budget


def quix_available(python: str = QUIX_PYTHON) -> str | None:
    """None when `python` can import quixstreams; otherwise why not."""
    if not pathlib.Path(python).exists():
        return f"no {python} (`make venv-quix` builds it; BENCH_QUIX_PYTHON names another)"
    done = subprocess.run(
        [python, "-c", "import quixstreams"], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        return f"{python} cannot import quixstreams: {done.stderr.strip().splitlines()[-1:]}"
    return None


def systems(
    configs: list[tuple[int, float]],
    log_dir: pathlib.Path,
    params: pathlib.Path | None = None,
    quix_python: str = QUIX_PYTHON,
    compression: str = OUTPUT_COMPRESSION,
) -> list[System]:
    """Every system under test, baselines first. params: the model as a gmm-params JSON file
    (the pipes that classify read it; the worker reads the same model from its params topic).
    Every system compresses its outputs with `compression` (by default the worker's codec),
    so all of them write the same bytes."""
    c = compression
    if params is None:
        params = log_dir / "model.json"
        params.write_text(SEED_MODEL.dumps())
    out = [
        System(
            RDKAFKA,
            "rdkafka pipe: decode, classify, encode (batch 1024)",
            "rdk",
            lambda t, _p: RdkafkaPipe(t, params, 1024, c),
        ),
        System(
            "rdkafka-256",
            "rdkafka pipe: decode, classify, encode (batch 256)",
            "rdk256",
            lambda t, _p: RdkafkaPipe(t, params, 256, c),
        ),
        System(
            RAW,
            "raw aiokafka pipe (batch 1024)",
            "raw",
            lambda t, _p: RawPipe(t, 1024, compression=c),
        ),
        System(
            "raw-per-record",
            "raw aiokafka pipe, per-record send (batch 1024)",
            "rawpr",
            lambda t, _p: RawPipe(t, 1024, per_record=True, compression=c),
        ),
        System(
            "json",
            "JSON pipe: decode and encode JSON per record, no model (batch 1024)",
            "jpipe",
            lambda t, _p: RawPipe(t, 1024, json=True, compression=c),
        ),
        System(
            QUIX,
            "Quix Streams app: decode, classify, encode per record",
            "quix",
            lambda t, _p: QuixPipe(t, params, log_dir, quix_python, c),
        ),
        System(
            "faust",
            "Faust pipe, no model (batch 1024)",
            "fpipe",
            lambda t, _p: FaustPipe(t, log_dir, c),
        ),
    ]
    for max_batch, delay in configs:

        def start(t: Topics, p: int, b: int = max_batch, d: float = delay) -> Any:
            return start_worker(
                b,
                d,
                log_dir,
                GMM_INPUT_PARTITIONS=str(p),
                GMM_OUTPUT_COMPRESSION=c,
                GMM_OUTPUT_ZSTD_LEVEL=str(ZSTD_LEVEL),  # the baselines' level, whatever is set
            )(t)

        out.append(
            System(
                f"worker-{max_batch}",
                f"worker batch {max_batch}, delay {delay:g} ms",
                f"w{max_batch}",
                start,
                delay,
            )
        )
    return out


def summarize(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over rounds; each ratio is taken against the first system of the same round
    (bench/codecs.py's summary: its uncompressed worker)."""
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


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": float(np.median(values)),
        "range": [float(min(values)), float(max(values))],
    }


def _latency_over(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Latency quantiles over rounds: the median of each, and the range of the p99."""
    p99 = [x["latency_ms"]["p99"] for x in runs]
    return {
        "latency_ms": {
            q: float(np.median([x["latency_ms"][q] for x in runs]))
            for q in ("p50", "p95", "p99", "max")
        },
        "p99_ms_range": [float(min(p99)), float(max(p99))],
    }


def summarize_systems(
    rounds: list[dict[str, dict[str, Any]]], chosen: Sequence[System]
) -> list[dict[str, Any]]:
    """Per system: medians over the rounds it completed, ranges over them (the worst round
    included), and each throughput ratio against a baseline of the same round, median and worst
    (the lowest). rounds: per round, the runs by system key (a failed run has an "error")."""
    out = []
    for s in chosen:
        runs = [r[s.key] for r in rounds if s.key in r and "error" not in r[s.key]]
        failed = [r[s.key]["error"] for r in rounds if s.key in r and "error" in r[s.key]]
        entry: dict[str, Any] = {
            "key": s.key,
            "system": s.name,
            "max_delay_ms": s.max_delay_ms,
            "p99_budget_ms": None if s.max_delay_ms is None else s.max_delay_ms + BUDGET_SLACK_MS,
            "rounds": len(runs),
            "failed_rounds": failed,
        }
        if not runs:
            out.append(entry)
            continue
        rates = [x["throughput_records_per_second"] for x in runs]
        entry.update(
            throughput_records_per_second=float(np.median(rates)),
            throughput_range=[float(min(rates)), float(max(rates))],
            latency_load_records_per_second=float(
                np.median([x["latency_load_records_per_second"] for x in runs])
            ),
            **_latency_over(runs),
        )
        versus = {}
        for name, base in [(b, b) for b in BASELINES] + [("same_batch", SAME_BATCH.get(s.key))]:
            ratios = [
                r[s.key]["throughput_records_per_second"] / r[base]["throughput_records_per_second"]
                for r in rounds
                if base is not None and all(k in r and "error" not in r[k] for k in (s.key, base))
            ]
            if ratios:
                versus[name] = {**_spread(ratios), "worst": float(min(ratios))}
                if name == "same_batch":
                    versus[name]["baseline"] = base
        entry["throughput_vs"] = versus
        loads = []
        for j, first in enumerate(runs[0]["loads"]):
            at = [x["loads"][j] for x in runs]
            measured = [x for x in at if not x["saturated"]]
            load: dict[str, Any] = {
                "load": first["load"],
                "target_records_per_second": first["target_records_per_second"],
                "saturated_rounds": len(at) - len(measured),
            }
            if measured:
                load.update(
                    offered_records_per_second=float(
                        np.median([x["offered_records_per_second"] for x in measured])
                    ),
                    **_latency_over(measured),
                )
            loads.append(load)
        entry["loads"] = loads
        out.append(entry)
    return out


def _ratio_cell(r: dict[str, Any], base: str) -> str:
    v = r.get("throughput_vs", {}).get(base)
    return "" if v is None else f"{v['median']:.2f} ({v['worst']:.2f})"


def _load_cell(load: dict[str, Any]) -> str:
    if "latency_ms" not in load:
        return "saturated"
    lat = load["latency_ms"]
    text = f"{lat['p50']:.0f} / {lat['p99']:.0f}"
    if load["saturated_rounds"]:
        text += f" (saturated in {load['saturated_rounds']} round(s))"
    return text


def table(results: list[dict[str, Any]], loads: Sequence[float]) -> str:
    header = [
        "system",
        "records/s (range)",
        "vs rdkafka pipe: median (worst)",
        "vs Quix app: median (worst)",
        "vs rdkafka pipe, same batch: median (worst)",
        "half-rate load (rec/s)",
        "p50 ms",
        "p99 ms (range)",
        *(f"p50 / p99 ms at {x:,.0f}/s" for x in loads),
        f"p99 budget ms (delay + {BUDGET_SLACK_MS:g})",
    ]
    rows = []
    for r in results:
        if "throughput_records_per_second" not in r:
            rows.append([r["system"], "failed in every round", *[""] * (len(header) - 2)])
            continue
        lo, hi = r["throughput_range"]
        p_lo, p_hi = r["p99_ms_range"]
        failed = f" (failed in {len(r['failed_rounds'])} round(s))" if r["failed_rounds"] else ""
        rows.append(
            [
                r["system"] + failed,
                f"{r['throughput_records_per_second']:,.0f} ({lo:,.0f}-{hi:,.0f})",
                _ratio_cell(r, RDKAFKA),
                _ratio_cell(r, QUIX),
                _ratio_cell(r, "same_batch"),
                r["latency_load_records_per_second"],
                r["latency_ms"]["p50"],
                f"{r['latency_ms']['p99']:.0f} ({p_lo:.0f}-{p_hi:.0f})",
                *(_load_cell(x) for x in r["loads"]),
                "" if r["p99_budget_ms"] is None else f"{r['p99_budget_ms']:g}",
            ]
        )
    return markdown_table(header, rows)


def _parse_list(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def output_dir(out: pathlib.Path | None, quick: bool) -> pathlib.Path:
    """Where the results go: `--out`, else bench/results; a quick run's never go there (they
    would replace the published ones), but into a new temporary directory."""
    if out is not None:
        return out
    return pathlib.Path(tempfile.mkdtemp(prefix="bench-stream-quick-")) if quick else RESULTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller runs, one round, one worker setting; results in a temporary directory",
    )
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every system")
    parser.add_argument(
        "--records", type=int, help="the backlog drained (default 200,000; --quick: 40,000)"
    )
    parser.add_argument(
        "--seconds", type=float, help="length of each latency phase (default 8; --quick: 4)"
    )
    parser.add_argument(
        "--partitions",
        default=str(PARTITIONS),
        help="partition counts of the input and output topics, comma-separated (e.g. 2,12,64)",
    )
    parser.add_argument(
        "--loads",
        default=",".join(f"{x:g}" for x in LOADS),
        help="fixed offered loads of the latency phase, records/s, comma-separated ('' for none)",
    )
    parser.add_argument(
        "--systems", help="system keys to run, comma-separated (default: all; see above)"
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="where stream.{md,json,png} go (default: bench/results; --quick: a temp directory)",
    )
    parser.add_argument(
        "--quix-python", default=QUIX_PYTHON, help="the interpreter that runs the Quix app"
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=OUTPUT_COMPRESSION,
        help="every system's output codec (default: the worker's, GMM_OUTPUT_COMPRESSION's)",
    )
    args = parser.parse_args(argv)
    n_drain, seconds = (40_000, 4.0) if args.quick else (200_000, 8.0)
    n_drain = args.records or n_drain
    seconds = args.seconds or seconds
    rounds_n = 1 if args.quick else args.rounds
    partitions = _parse_list(args.partitions, int)
    loads = _parse_list(args.loads, float)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-stream-"))
    out_dir = output_dir(args.out, args.quick)

    every = systems(
        WORKER_CONFIGS, log_dir, quix_python=args.quix_python, compression=args.compression
    )
    known = [s.key for s in every]
    if args.systems:
        wanted = _parse_list(args.systems, str)
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = [s for s in every if s.key in wanted]
    else:
        # --quick: one worker setting (batch 1024).
        quick_skips = {f"worker-{b}" for b, _ in WORKER_CONFIGS} - {"worker-1024"}
        chosen = [s for s in every if not (args.quick and s.key in quick_skips)]
    skipped = []
    if any(s.key == QUIX for s in chosen):
        why = quix_available(args.quix_python)
        if why:
            print(f"Quix Streams app: skipped ({why})", file=sys.stderr)
            skipped.append({"system": QUIX, "why": why})
            chosen = [s for s in chosen if s.key != QUIX]

    # Rounds interleave every system at every partition count, so a slow spell of the shared
    # machine hits all of them. A run that fails is recorded and left out of the medians.
    by_partitions: dict[int, list[dict[str, dict[str, Any]]]] = {p: [] for p in partitions}
    started = time.monotonic()
    payload: dict[str, Any] = {}
    for i in range(rounds_n):
        for p in partitions:
            runs: dict[str, dict[str, Any]] = {}
            for s in chosen:
                try:
                    runs[s.key] = measure(
                        s.name,
                        Topics(f"{s.stem}p{p}"),
                        lambda t, s=s, p=p: s.start(t, p),
                        n_drain,
                        seconds,
                        s.max_delay_ms,
                        loads,
                        p,
                    )
                except Exception as exc:  # one failed run must not end the benchmark
                    print(f"{s.name} [{p} partitions]: FAILED: {exc!r}", file=sys.stderr)
                    runs[s.key] = {"system": s.name, "partitions": p, "error": repr(exc)}
            by_partitions[p].append(runs)
        payload = report(
            by_partitions,
            chosen,
            skipped,
            n_drain,
            seconds,
            loads,
            i + 1,
            args.quick,
            out_dir,
            compression=args.compression,
        )
    print(f"results in {out_dir} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(payload["markdown"])
    return 0


def report(
    by_partitions: dict[int, list[dict[str, dict[str, Any]]]],
    chosen: Sequence[System],
    skipped: list[dict[str, str]],
    n_drain: int,
    seconds: float,
    loads: Sequence[float],
    rounds_done: int,
    quick: bool,
    out_dir: pathlib.Path,
    plot: bool = True,
    compression: str = OUTPUT_COMPRESSION,
) -> dict[str, Any]:
    """Writes the results so far (after every round: a long run interrupted keeps its rounds)."""
    sections: list[dict[str, Any]] = [
        {
            "partitions": p,
            "rounds": rounds,
            "results": summarize_systems(rounds, chosen),
        }
        for p, rounds in by_partitions.items()
    ]
    payload: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "partitions": list(by_partitions),
        "drain_records": n_drain,
        "latency_seconds": seconds,
        "loads_records_per_second": list(loads),
        "output_compression": compression,
        "rounds_done": rounds_done,
        "systems": [s.key for s in chosen],
        "skipped": skipped,
        "by_partitions": sections,
    }
    counts = ", ".join(str(p) for p in by_partitions)
    md = (
        "# Stream throughput and latency through the real broker\n\n"
        f"One broker (Kafka 4.0.2, KRaft) on loopback, {payload['machine']['cpus']} CPUs shared "
        "by the broker, the load generator and the system under test; input and output topics "
        f"of {counts} partitions, both stamped with the broker's LogAppendTime. Throughput: "
        f"drain rate of a preloaded backlog of {n_drain:,} records. Latency: output append time "
        "minus input append time, at half of that system's drain rate and at each fixed load, "
        f"for {seconds:g} s each; a load above the system's drain rate is not run (saturated). "
        f"Every system writes its outputs in record batches of one codec, {compression}"
        + (f" at level {ZSTD_LEVEL}" if compression == "zstd" else "")
        + (" (the worker's default)" if compression == OUTPUT_COMPRESSION else "")
        + ", so each moves the same bytes. "
        f"Medians of {rounds_done} interleaved round(s), with the range in brackets; each ratio "
        "is against the rdkafka pipe (or the Quix app) of its own round and partition count, "
        "median and worst round; the same-batch column puts a worker setting beside the rdkafka "
        "pipe reading batches of its size (batch 1024: the pipe above), where one ran."
        + "".join(f" Skipped: {x['system']} ({x['why']})." for x in skipped)
        + "\n"
    )
    for section in sections:
        md += f"\n## {section['partitions']} partitions\n\n" + table(section["results"], loads)
    md += "\n![stream](stream.png)\n"
    write(out_dir, payload, md)
    if plot:
        plot_sections(sections, out_dir)
    return {**payload, "markdown": md}


def write(out_dir: pathlib.Path, payload: dict[str, Any], md: str) -> None:
    if out_dir == RESULTS:
        write_results("stream", payload, md)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stream.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (out_dir / "stream.md").write_text(md)


def plot_sections(sections: list[dict[str, Any]], out_dir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    # By system key: the full names are in the tables.
    names = list(dict.fromkeys(r["key"] for section in sections for r in section["results"]))
    x = np.arange(len(names))
    width = 0.8 / max(len(sections), 1)
    for i, section in enumerate(sections):
        by_name = {r["key"]: r for r in section["results"]}
        offset = (i - (len(sections) - 1) / 2) * width
        label = f"{section['partitions']} partitions"
        a.bar(
            x + offset,
            [by_name.get(n, {}).get("throughput_records_per_second", 0) for n in names],
            width,
            label=label,
        )
        b.bar(
            x + offset,
            [by_name.get(n, {}).get("latency_ms", {}).get("p99", 0) for n in names],
            width,
            label=label,
        )
    a.set_ylabel("records / second")
    a.set_title("Drain throughput")
    b.set_ylabel("ms (log scale)")
    b.set_yscale("log")
    b.set_title("p99 end-to-end latency at half of each drain rate")
    for ax in (a, b):
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "stream.png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
