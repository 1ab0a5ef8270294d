"""Which codec the worker's outputs should use: bench.stream's drain and latency runs, once per
GMM_OUTPUT_COMPRESSION, with the bytes the broker stores per output record.

Every codec runs in every round (interleaved, so a slow spell of the shared machine hits all of
them), on topics of its own; ratios are against the uncompressed worker of the same round. The
input is written uncompressed by the load generator in all runs. Writes
bench/results/codecs.{md,json}.

    python -m bench.codecs [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from typing import Any

import numpy as np

from bench import stream
from bench._common import machine, markdown_table, write_results
from bench.stream import BOOTSTRAP, PARTITIONS, measure, start_worker
from kafka_common.settings import COMPRESSIONS
from support.harness import Topics, topic_log_bytes

MAX_BATCH, MAX_DELAY_MS = 1024, 20.0


def run_round(n_drain: int, seconds: float, log_dir: pathlib.Path) -> list[dict[str, Any]]:
    out = []
    for codec in COMPRESSIONS:
        topics = Topics(f"codec{codec}")
        start = start_worker(MAX_BATCH, MAX_DELAY_MS, log_dir, GMM_OUTPUT_COMPRESSION=codec)
        result = measure(f"worker, {codec}", topics, start, n_drain, seconds, MAX_DELAY_MS)
        records = n_drain + int(result["latency_load_records_per_second"] * seconds)
        result["codec"] = codec
        result["output_bytes_per_record"] = topic_log_bytes(BOOTSTRAP, topics.output) / records
        out.append(result)
    return out


def summarize(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """bench.stream's medians and ranges over rounds (the uncompressed run is each round's
    baseline), with each codec's bytes on the broker."""
    out = []
    for base, runs in zip(stream.summarize(rounds), zip(*rounds, strict=True), strict=True):
        rates = [x["throughput_records_per_second"] for x in runs]
        out.append(
            {
                "codec": runs[0]["codec"],
                "throughput_records_per_second": base["throughput_records_per_second"],
                "throughput_range": [float(min(rates)), float(max(rates))],
                "throughput_vs_none": base["throughput_vs_raw"],
                "throughput_vs_none_range": base["throughput_vs_raw_range"],
                "p99_ms": base["latency_ms"]["p99"],
                "p99_ms_range": base["p99_ms_range"],
                "output_bytes_per_record": float(
                    np.median([x["output_bytes_per_record"] for x in runs])
                ),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, one round")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every codec")
    args = parser.parse_args(argv)
    n_drain, seconds = (40_000, 4.0) if args.quick else (200_000, 8.0)
    rounds_n = 1 if args.quick else args.rounds
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    rounds = [run_round(n_drain, seconds, log_dir) for _ in range(rounds_n)]
    results = summarize(rounds)
    none_bytes = results[0]["output_bytes_per_record"]
    rows = [
        [
            r["codec"],
            f"{r['throughput_records_per_second']:,.0f} "
            f"({r['throughput_range'][0]:,.0f}-{r['throughput_range'][1]:,.0f})",
            f"{r['throughput_vs_none']:.2f} "
            f"({r['throughput_vs_none_range'][0]:.2f}-{r['throughput_vs_none_range'][1]:.2f})",
            f"{r['p99_ms']:.0f} ({r['p99_ms_range'][0]:.0f}-{r['p99_ms_range'][1]:.0f})",
            f"{r['output_bytes_per_record']:.1f}",
            f"{r['output_bytes_per_record'] / none_bytes:.2f}",
        ]
        for r in results
    ]
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "max_batch": MAX_BATCH,
        "max_delay_ms": MAX_DELAY_MS,
        "drain_records": n_drain,
        "latency_seconds": seconds,
        "rounds": rounds,
        "results": results,
    }
    md = (
        "# Output compression of the worker (GMM_OUTPUT_COMPRESSION)\n\n"
        f"bench.stream's runs for the worker (batch {MAX_BATCH}, delay {MAX_DELAY_MS:g} ms), "
        f"once per codec: one broker on loopback, {PARTITIONS} partitions, "
        f"{payload['machine']['cpus']} CPUs shared by the broker, the load generator and the "
        f"worker. Throughput: drain of {n_drain:,} preloaded records; p99: output append time "
        f"minus input append time at half the drain rate for {seconds:g} s; bytes: the output "
        "topic's log segments per output record. Medians of "
        f"{rounds_n} interleaved round(s), range over rounds (worst included) in brackets; "
        "ratios against the uncompressed worker of the same round.\n\n"
        + markdown_table(
            [
                "codec",
                "records/s",
                "vs none",
                "p99 ms",
                "bytes/record on the broker",
                "bytes vs none",
            ],
            rows,
        )
    )
    write_results("codecs", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
