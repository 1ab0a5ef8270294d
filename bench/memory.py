"""Memory bounded in bytes: a worker's peak RSS while it drains a backlog of 60 KB records.

For each configuration (the defaults; a baseline bounded by records only, as the worker was
before the byte limits; and, as diagnostics, both again with glibc unmapping every freed block
of 32 KiB or more, so RSS follows the memory in use), on topics of its own with 4 input
partitions:
  1. the model is published and one worker started; its process RSS (VmRSS of
     /proc/PID/status) is sampled every 50 ms from its start to the end;
  2. once it is ready and owns the 4 partitions, its idle RSS is the median of 1 s of samples;
  3. the worker is frozen (SIGSTOP), the backlog (N records of 60,000 bytes, valid points whose
     id carries the padding) is produced over the 4 partitions, the kernel's peak-RSS mark is
     reset (`5` into /proc/PID/clear_refs), and the worker resumed (SIGCONT): it finds a real
     backlog, all of it in the log before its first fetch, and nothing of the backlog is in
     the idle figure. Its session timeout is raised to 30 s so the pause never costs a
     rebalance;
  4. when its committed offsets sum to N, its peak RSS is VmHWM (exact, the kernel's mark since
     the reset; the 50 ms samples are reported beside it), and the data part is peak - idle.
The defaults' data part is checked against the bound derived from the code (`bound`, written
out in the results), and the bytes orjson allocates for one output are measured (tracemalloc).
All four run in one benchmark run against the same broker (start it with `make kafka-up`).
Writes bench/results/memory.{md,json}.

    python -m bench.memory [--quick] [--records N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from bench._common import machine, markdown_table, write_results
from stream_app.record_path import MAX_IN_FLIGHT
from stream_app.settings import WorkerSettings
from support.harness import (
    SEED_MODEL,
    Topics,
    Worker,
    consume,
    count_records,
    create_worker_topics,
    delete_topics,
    publish_model,
    wait_for,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PARTITIONS = 4
#: Bytes of each input record's value (key `m-<i>` aside): under GMM_MAX_RECORD_BYTES (65,536).
RECORD_BYTES = 60_000
SAMPLE_S = 0.05
MIB = 1024 * 1024

#: (name, worker environment). The baseline approximates the worker bounded by records only:
#: aiokafka's default fetch of 50 MiB (1 MiB a partition) and no byte cap on a micro-batch.
CONFIGS: list[tuple[str, dict[str, str]]] = [
    ("defaults", {}),
    (
        "records only (baseline)",
        {
            "GMM_FETCH_MAX_BYTES": str(50 * MIB),
            "GMM_FETCH_PARTITION_MAX_BYTES": str(MIB),
            "GMM_MAX_BATCH_BYTES": str(1024 * MIB),
        },
    ),
]
#: Diagnostic runs of both: glibc serves every block of 32 KiB or more with a mmap of its own
#: and unmaps it when freed (a fixed threshold also stops glibc from raising it), so RSS follows
#: the memory in use, without what the allocator keeps of freed blocks.
MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "32768"}
DIAGNOSTICS = [
    (f"{name}, MALLOC_MMAP_THRESHOLD_=32768 (diagnostic)", {**env, **MMAP_THRESHOLD})
    for name, env in CONFIGS
]


def point_value(i: int, x: float, size: int, rng: np.random.Generator) -> bytes:
    """A valid point of exactly `size` bytes: its id is `<i>-` and base64 padding (random, so a
    codec cannot shrink it; any string id is valid, and the worker echoes it in the output)."""
    head = b'{"id":"%d-' % i
    tail = b'","x":' + json.dumps(x).encode() + b"}"
    n = size - len(head) - len(tail)
    pad = base64.b64encode(rng.bytes(n * 3 // 4 + 3))[:n]
    return head + pad + tail


def produce_backlog(topic: str, n: int, size: int = RECORD_BYTES, seed: int = 0) -> float:
    """N records round-robin over the partitions, uncompressed (the fetch limits then count
    the records' real bytes); librdkafka's default batches (up to 1,000,000 bytes). Seconds."""
    from confluent_kafka import Producer

    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    xs = np.where(rng.random(n) < 0.4, rng.normal(0.5, 1, n), rng.normal(11, 1, n))
    errors: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "acks": "all",
            "compression.type": "none",
            "linger.ms": 5,
        }
    )
    for i, x in enumerate(xs.tolist()):
        value = point_value(i, x, size, rng)
        while True:
            try:
                producer.produce(
                    topic, value, f"m-{i}".encode(), partition=i % PARTITIONS, on_delivery=report
                )
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"backlog: {left} undelivered, errors {errors[:3]}")
    return time.monotonic() - t0


def allocated_by_dumps(value: bytes) -> int:
    """Bytes that orjson.dumps allocates for the object of one output record (tracemalloc): the
    worker encodes each output with it, and the bytes object it returns may be allocated larger
    than its length (sys.getsizeof does not show it)."""
    import tracemalloc

    import orjson

    doc = orjson.loads(value)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = orjson.dumps(doc)
        allocated = tracemalloc.get_traced_memory()[0] - before
        del out  # alive until measured
    finally:
        tracemalloc.stop()
    return allocated


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def reset_peak(pid: int) -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """VmRSS of one process every `interval` seconds, as (seconds since start, bytes)."""

    def __init__(self, pid: int, interval: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (OSError, KeyError):  # not started yet, or gone
                rss = None
            if rss is not None:
                self.samples.append((time.monotonic() - self.t0, rss))
            self._halt.wait(self.interval)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def between(self, start: float, end: float = float("inf")) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def bound(env: dict[str, str], output_ratio: float, record_bytes: int) -> dict[str, Any]:
    """The bytes of records a worker can hold at once with these settings (see BOUND_TEXT)."""
    worker = WorkerSettings.from_env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, **env})
    kafka = worker.kafka
    fetch_partition, fetch_max = kafka.fetch_partition_max_bytes, kafka.fetch_max_bytes
    buffered = PARTITIONS * fetch_partition
    in_transit = min(fetch_max, PARTITIONS * fetch_partition)
    carried = PARTITIONS * fetch_partition
    fetch = buffered + in_transit + carried
    # A batch closes at GMM_MAX_BATCH_BYTES or GMM_MAX_BATCH records, whichever comes first.
    batch = min(worker.max_batch_bytes, worker.max_batch * record_bytes)
    per_batch = (batch + worker.max_record_bytes) * (1 + 2 * output_ratio)
    total = fetch + (MAX_IN_FLIGHT + 1) * per_batch
    return {
        "fetch_max_bytes": fetch_max,
        "fetch_partition_max_bytes": fetch_partition,
        "max_batch_bytes": worker.max_batch_bytes,
        "max_batch_records": worker.max_batch,
        "max_record_bytes": worker.max_record_bytes,
        "max_in_flight": MAX_IN_FLIGHT,
        "output_ratio": output_ratio,
        "fetch_bytes": fetch,
        "batch_bytes": batch,
        "per_batch_bytes": per_batch,
        "bound_bytes": total,
    }


BOUND_TEXT = """\
Records held at once, in bytes of keys and values, read off the code:

    bound = F + (MAX_IN_FLIGHT + 1) x (b + R) x (1 + 2r)
    F     = P x Fp  +  min(Fm, P x Fp)  +  P x Fp
    b     = min(GMM_MAX_BATCH_BYTES, GMM_MAX_BATCH x record size)

- **F, the fetch side**, with P the worker's input partitions, Fp `GMM_FETCH_PARTITION_MAX_BYTES`,
  Fm `GMM_FETCH_MAX_BYTES`. aiokafka's fetcher keeps at most one fetched result per partition
  (it fetches no partition whose records are unconsumed), each at most Fp: P x Fp; a response
  being read and decoded is at most min(Fm, P x Fp); and `PointSource` carries the records a
  `getmany` returned past a full batch to the next one, at most what that call drained: P x Fp
  again. (The broker returns a first record batch larger than the limits whole; the producer
  here writes batches of at most 1,000,000 bytes, under Fp.)
- **MAX_IN_FLIGHT + 1 batches**: the checkpoint lets the feeder start a batch only while fewer
  than `MAX_IN_FLIGHT` (4) are unsettled, the one being filled included; the agent keeps the
  last batch it handled until the next one arrives: one more.
- **b + R per batch**: `source.fitting` closes a batch before its keys and values pass
  `GMM_MAX_BATCH_BYTES`, or at `GMM_MAX_BATCH` records; only a batch's first record may be
  larger than the rest of the room, and a record larger than `GMM_MAX_RECORD_BYTES` (R) is only
  dead-lettered: + R covers one record.
- **1 + 2r per input byte**: the input, its output (r: output bytes per input byte; an
  assignment echoes the point's id and x and adds ~250 bytes of fields; r is measured on the
  output topic), and the producer's copy of the output in its record batch until the broker
  acknowledges it. Generous: a batch holds its inputs until it is handled and its outputs
  after, both only while it is being handled.

Not in the bound: the interpreter, JAX, Faust and the clients (the idle RSS), and what the
allocator keeps of freed memory; so the check is the data part, peak RSS minus idle RSS,
against the bound."""


def measure(name: str, env: dict[str, str], n: int, log_dir: pathlib.Path) -> dict[str, Any]:
    topics = Topics("mem")
    create_worker_topics(BOOTSTRAP, topics, partitions=PARTITIONS)
    publish_model(BOOTSTRAP, topics.params, SEED_MODEL)
    worker = Worker(
        BOOTSTRAP,
        topics,
        log_dir,
        GMM_LOG_LEVEL="warn",
        GMM_INPUT_PARTITIONS=str(PARTITIONS),
        GMM_SESSION_TIMEOUT_S="30",
        **env,
    ).start()
    assert worker.proc is not None
    pid = worker.proc.pid
    sampler = RssSampler(pid)
    sampler.start()
    try:
        worker.wait_ready(180)
        wait_for(
            lambda: worker.metric("gmm_assigned_partitions") == PARTITIONS,
            120,
            interval=0.2,
            message=f"{name}: the worker owning {PARTITIONS} partitions",
        )
        time.sleep(1.5)  # settle: the consumer has joined and idles on empty partitions
        t_idle = sampler.now()
        time.sleep(1.0)
        idle = statistics.median(sampler.between(t_idle))
        startup_peak = proc_status(pid)["VmHWM"]

        os.kill(pid, signal.SIGSTOP)
        try:
            produce_s = produce_backlog(topics.input, n)
            hwm_reset = reset_peak(pid)
            frozen_rss = proc_status(pid)["VmRSS"]
        finally:
            os.kill(pid, signal.SIGCONT)
        t_go = sampler.now()
        wait_for(
            lambda: worker.metric("gmm_input_committed_offset") >= n,
            300,
            interval=0.2,
            message=f"{name}: the backlog committed",
        )
        drain_s = sampler.now() - t_go
        status = proc_status(pid)
        batches = batch_sizes(worker.metrics_text())
        kids = children(pid)
    finally:
        try:
            sampler.stop()
        finally:
            worker.stop()
    sampled = sampler.between(t_go)
    peak_sampled = max(sampled)
    peak = max(status["VmHWM"], peak_sampled) if hwm_reset else peak_sampled
    outputs = count_records(BOOTSTRAP, topics.output)
    dead = count_records(BOOTSTRAP, topics.dlq)
    # Output bytes per input byte (keys and values), from the first records of each topic.
    ins = consume(BOOTSTRAP, topics.input, 40)
    outs = consume(BOOTSTRAP, topics.output, 40)
    delete_topics(BOOTSTRAP, topics)  # ~240 MB of the broker's disk per configuration
    size = statistics.mean(len(r.key or b"") + len(r.value or b"") for r in ins)
    out_size = statistics.mean(len(r.key or b"") + len(r.value or b"") for r in outs)
    result = {
        "config": name,
        "env": env,
        "records": n,
        "record_bytes": size,
        "output_record_bytes": out_size,
        "output_ratio": out_size / size,
        "output_allocated_bytes": allocated_by_dumps(outs[0].value),
        "output_value_bytes": len(outs[0].value),
        "backlog_bytes": n * size,
        "produce_seconds": produce_s,
        "drain_seconds": drain_s,
        "records_per_second": n / drain_s,
        "outputs": outputs,
        "dead_letters": dead,
        "idle_rss_bytes": idle,
        "rss_while_frozen_bytes": frozen_rss,
        "startup_peak_rss_bytes": startup_peak,
        "peak_rss_bytes": peak,
        "peak_rss_sampled_bytes": peak_sampled,
        "peak_from_vmhwm": hwm_reset,
        "data_bytes": peak - idle,
        "child_processes": len(kids),
        "batches": batches,
        # RSS over time (s since the worker started, MiB): the largest sample of each 0.25 s.
        "timeline": downsample(sampler.samples, 0.25),
        "resumed_at_s": t_go,
    }
    print(
        f"{name}: idle {idle / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
        f"(sampled {peak_sampled / MIB:.0f}), data {(peak - idle) / MIB:.0f} MiB; "
        f"{n:,} records in {drain_s:.1f} s; {outputs:,} outputs, {dead} dead letters",
        file=sys.stderr,
    )
    if outputs != n or dead:
        print(f"{name}: expected {n} outputs and no dead letters", file=sys.stderr)
    return result


def batch_sizes(metrics_text: str) -> dict[str, float]:
    """Micro-batches the worker made: how many, their mean size and (from the histogram's
    buckets) the bucket bound of the largest, in records."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "gmm_batch_size_records_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "gmm_batch_size_records_sum":
                total = sample.value
            elif sample.name == "gmm_batch_size_records_count":
                count = sample.value
    largest = min((le for le, v in buckets if v >= count), default=float("nan"))
    return {"count": count, "mean_records": total / max(count, 1), "largest_at_most": largest}


def downsample(samples: list[tuple[float, int]], step: float) -> list[list[float]]:
    out: dict[int, tuple[float, int]] = {}
    for t, rss in samples:
        k = int(t / step)
        if k not in out or rss > out[k][1]:
            out[k] = (t, rss)
    return [[round(t, 2), round(rss / MIB, 1)] for t, rss in out.values()]


def mib(b: float) -> float:
    return b / MIB


def verdict(default: dict[str, Any], diagnostic: dict[str, Any]) -> str:
    """What the defaults' row says, in words, from the measurements."""
    b = default["bound"]
    text = (
        f"With the defaults (P = {PARTITIONS}, Fp = {mib(b['fetch_partition_max_bytes']):g} MiB, "
        f"Fm = {mib(b['fetch_max_bytes']):g} MiB, b = {mib(b['batch_bytes']):g} MiB, R = "
        f"{b['max_record_bytes'] / 1024:g} KiB, r = {b['output_ratio']:.3f}): F = "
        f"{mib(b['fetch_bytes']):.0f} MiB, each batch {mib(b['per_batch_bytes']):.1f} MiB, bound = "
        f"{mib(b['bound_bytes']):.1f} MiB. Measured data part "
        f"{mib(default['data_bytes']):.1f} MiB ({default['data_bytes'] / b['bound_bytes']:.0%} of "
        "the bound): "
    )
    if default["within_bound"]:
        text += "within it."
    else:
        text += "**over it**."
    alloc, length = default["output_allocated_bytes"], default["output_value_bytes"]
    text += (
        f" The diagnostic run (the same defaults; glibc unmaps every freed block of 32 KiB or "
        f"more) holds {mib(diagnostic['data_bytes']):.1f} MiB "
        f"({diagnostic['data_bytes'] / diagnostic['bound']['bound_bytes']:.0%} of the bound): "
        "the difference is what glibc keeps resident of freed memory. "
        f"orjson.dumps allocates {alloc:,} bytes for an output of {length:,} "
        f"({alloc / length:.1f}x its length"
    )
    if alloc > 2 * length:
        text += (
            ": it reserves room for the worst-case escaping of a string and does not shrink the "
            "bytes object it returns). Each output a batch holds until it is acknowledged is "
            "such a block; once glibc has freed a mmapped block it raises its mmap threshold to "
            "that size and serves the next ones from its heap, whose pages stay resident as "
            "blocks come and go. So the worker copies each output to its exact size "
            "(`wire.common.exact_size`, `bytes(memoryview(value))`): before it copied those "
            "over 2 KiB, this run's defaults held 74-91 MiB, over the bound, in five runs."
        )
    else:
        text += ")."
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller backlog (600 records)")
    parser.add_argument("--records", type=int, default=None, help="backlog records (2,000)")
    args = parser.parse_args(argv)
    n = args.records or (600 if args.quick else 2000)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-memory-"))
    load_start = os.getloadavg()[0]
    t0 = time.monotonic()
    runs = [measure(name, env, n, log_dir) for name, env in [*CONFIGS, *DIAGNOSTICS]]
    for r in runs:
        r["bound"] = bound(r["env"], r["output_ratio"], int(r["record_bytes"]))
        r["within_bound"] = r["data_bytes"] <= r["bound"]["bound_bytes"]
    default, base, diagnostic, diagnostic_base = runs
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "records": n,
        "record_value_bytes": RECORD_BYTES,
        "sample_seconds": SAMPLE_S,
        "load_average_1m": [load_start, os.getloadavg()[0]],
        "seconds": time.monotonic() - t0,
        "runs": runs,
        "baseline_vs_defaults": {
            "peak_rss": base["peak_rss_bytes"] / default["peak_rss_bytes"],
            "data": base["data_bytes"] / max(default["data_bytes"], 1),
            "diagnostic_peak_rss": diagnostic_base["peak_rss_bytes"] / diagnostic["peak_rss_bytes"],
            "diagnostic_data": diagnostic_base["data_bytes"] / max(diagnostic["data_bytes"], 1),
        },
    }
    rows = []
    for r in runs:
        b = r["bound"]
        rows.append(
            [
                r["config"],
                f"{mib(b['fetch_max_bytes']):g} / {mib(b['fetch_partition_max_bytes']):g}",
                f"{mib(b['max_batch_bytes']):g}",
                f"{mib(r['idle_rss_bytes']):.0f}",
                f"{mib(r['peak_rss_bytes']):.0f} ({mib(r['peak_rss_sampled_bytes']):.0f})",
                f"{mib(r['data_bytes']):.0f}",
                f"{mib(b['bound_bytes']):.0f}",
                "yes" if r["within_bound"] else "**no**",
                f"{r['batches']['mean_records']:.0f} (<= {r['batches']['largest_at_most']:g})",
                f"{r['drain_seconds']:.1f}",
                f"{r['records_per_second']:,.0f}",
            ]
        )
    m = payload["machine"]
    ratio = payload["baseline_vs_defaults"]
    md = (
        "# Memory bounded in bytes\n\n"
        f"A backlog of {n:,} records of {RECORD_BYTES:,} bytes (valid points; the id carries "
        f"random base64 padding), {mib(default['backlog_bytes']):.0f} MiB over {PARTITIONS} "
        "partitions, uncompressed, all in the log before the worker's first fetch (the worker "
        "is frozen while it is produced), drained by one worker. RSS is the worker process's "
        "(it has no child processes): idle = median over 1 s once ready and owning the "
        "partitions; peak = the kernel's VmHWM, reset just before the backlog (the largest "
        "50 ms sample in brackets); data = peak - idle. Output bytes per input byte r = "
        f"{default['output_ratio']:.3f}. The bound is in bytes of records held (below).\n\n"
        + markdown_table(
            [
                "configuration",
                "fetch max / per partition (MiB)",
                "GMM_MAX_BATCH_BYTES (MiB)",
                "idle RSS (MiB)",
                "peak RSS (MiB)",
                "data (MiB)",
                "bound (MiB)",
                "data within bound",
                "batch records: mean (largest)",
                "drain (s)",
                "records/s",
            ],
            rows,
        )
        + f"\nThe baseline peaks at {ratio['peak_rss']:.2f}x the defaults' RSS and its data "
        f"part is {ratio['data']:.2f}x theirs ({ratio['diagnostic_peak_rss']:.2f}x and "
        f"{ratio['diagnostic_data']:.2f}x in the diagnostic runs). Its bound (the same formula, "
        f"a batch capped at {base['bound']['max_batch_records']:,} records) is larger than this "
        "backlog: nothing but time stops its batches from growing to "
        f"{base['bound']['max_batch_records']:,} records (the largest bucket of "
        "`gmm_batch_size_records` is shown). Here they close on GMM_MAX_DELAY_MS (20 ms) "
        "first: a `getmany` returns what aiokafka holds, at most 1 MiB a partition in both "
        "configurations, so a batch holds what the fetches bring in 20 ms, and the baseline "
        "holds far less than its bound allows; a faster fetch or a longer delay would let it "
        "take more.\n\n"
        + verdict(default, diagnostic)
        + "\n\n## The bound\n\n"
        + BOUND_TEXT
        + f"\n\n{m['cpus']} CPUs, {m['machine']}, JAX {m['jax']} on {m['jax_backend']}, Python "
        f"{m['python']}; the broker, the producer and the worker share them. 1-minute load "
        f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. One run "
        f"of each configuration, {payload['seconds']:.0f} s in all.\n"
    )
    write_results("memory", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
