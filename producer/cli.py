"""`gmm-produce`: a load generator for the input topic, for the demo and the benchmarks.

Writes a synthetic Gaussian-mixture stream (or replays a JSON-lines file) at a given rate or as
fast as it can, each record `{"id": "<prefix>-<n>", "x": ...}` keyed by its id. Kafka connection
settings come from the environment, as for the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from kafka_common.batch_sender import BatchSender, send_paced
from kafka_common.connection import KafkaUnavailable, check_connection, describe_kafka_error
from kafka_common.settings import COMPRESSIONS, KafkaSettings, SettingsError, load

PROG = "gmm-produce"


def parse_locs(text: str) -> np.ndarray:
    """'0,10' -> K=2 in 1-D; '0,0;5,5;9,0' -> K=3 in 2-D."""
    rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    arr = np.asarray(rows)
    return arr.T if arr.shape[0] == 1 else arr


def synthetic(args: argparse.Namespace) -> Iterator[tuple[bytes, bytes]]:
    locs = parse_locs(args.locs)  # (K, D)
    k, dim = locs.shape
    weights = (
        np.asarray([float(w) for w in args.weights.split(",")]) if args.weights else np.ones(k)
    )
    if len(weights) != k or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"--weights needs {k} non-negative numbers")
    weights = weights / weights.sum()
    rng = np.random.default_rng(args.seed)
    n = 0
    while args.count == 0 or n < args.count:
        chunk = 4096 if args.count == 0 else min(4096, args.count - n)
        z = rng.choice(k, size=chunk, p=weights)
        xs = locs[z] + args.scale * rng.normal(size=(chunk, dim))
        for x in xs:
            rid = f"{args.id_prefix}-{n}"
            value = float(x[0]) if dim == 1 else [float(v) for v in x]
            yield rid.encode(), json.dumps({"id": rid, "x": value}).encode()
            n += 1


def replay(args: argparse.Namespace) -> Iterator[tuple[bytes | None, bytes]]:
    lines = pathlib.Path(args.replay).read_bytes().splitlines()
    sent = 0
    while True:
        for line in lines:
            if args.count and sent >= args.count:
                return
            if line.strip():
                yield None, line
                sent += 1
        if not args.count:
            return


async def produce(args: argparse.Namespace, kafka: KafkaSettings) -> int:
    await check_connection(kafka)
    source = replay(args) if args.replay else synthetic(args)
    producer = AIOKafkaProducer(**kafka.producer_options(), acks="all", max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        # Ids are unique, so no key needs a fixed partition: records are spread instead.
        sender = BatchSender(producer, by_key=False)
        sent = await send_paced(sender, args.topic, source, rate=args.rate)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - t0
    print(
        f"{PROG}: sent {sent} records to {args.topic} in {elapsed:.2f}s "
        f"({sent / max(elapsed, 1e-9):,.0f} records/s)",
        file=sys.stderr,
    )
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--topic", default=os.environ.get("GMM_INPUT_TOPIC", "gmm.points"))
    parser.add_argument("--count", type=int, default=10_000, help="records to send; 0: forever")
    parser.add_argument("--rate", type=float, default=0, help="records per second; 0: flat out")
    parser.add_argument("--locs", default="0,10", help="component locations: '0,10' or '0,0;5,5'")
    parser.add_argument("--scale", type=float, default=1.0, help="component scale")
    parser.add_argument("--weights", default="", help="mixture weights, e.g. '0.4,0.6'")
    parser.add_argument("--id-prefix", default="p", help="ids are <prefix>-<n>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", help="send this JSON-lines file's lines as they are")
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        help="codec of the record batches (default: GMM_OUTPUT_COMPRESSION, else zstd)",
    )
    args = parser.parse_args(argv)
    try:
        kafka = load(KafkaSettings, os.environ)
        if args.compression is not None:
            kafka = dataclasses.replace(kafka, output_compression=args.compression)
        if not args.replay:
            parse_locs(args.locs)
    except (SettingsError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(produce(args, kafka))
    except (KafkaUnavailable, KafkaError, OSError) as exc:
        print(
            f"{PROG}: error: {describe_kafka_error(exc, kafka.bootstrap_servers)}", file=sys.stderr
        )
        return 1
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
