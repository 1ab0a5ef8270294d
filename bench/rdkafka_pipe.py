"""A baseline for bench/stream: the worker's job written by hand on confluent-kafka (librdkafka).

What a developer writes who skips every framework: a consumer in a group (read_committed, auto
commit off, earliest), `consume` in batches; per record the JSON value `{"id": ..., "x": ...}` is
decoded with orjson; the batch is classified at once with numpy (the closed form: a log-softmax
over the components of log w_k + log N(x | loc_k, scale_k)); per record an assignment-like JSON
answer (`id`, `x`, `assignment`, `probs`, `log_likelihood`, and the input's `ts_in` and `source`
as the worker's assignment record has them) is encoded with orjson and produced, with the input's
key, on the input's partition by an idempotent acks=all producer, its record batches compressed
with `--compression` (bench.stream passes the worker's codec). The batch's offsets are
committed only once every output of the batch has a successful delivery report (at least once:
a crash repeats the batch, never loses it). Runs until stopped (SIGTERM).

The model is the one the worker would serve: a params JSON file (`ModelParams.dumps()`, what
the params topic carries). `Classifier` is shared with bench/quix_pipe.py.

    python -m bench.rdkafka_pipe --bootstrap HOST:PORT --source T --dest T --group G \
        --params model.json [--max-batch N] [--max-delay-ms MS]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import signal
import sys
from typing import Any

import numpy as np
import orjson

from kafka_common.settings import COMPRESSIONS
from mixture.params import ModelParams


class Classifier:
    """The mixture's closed form in numpy, float64: for each point the posterior over the
    components and log p(x). Every serving layout: a shared diagonal scale (D,), one per
    component (K, D), or lower Cholesky factors (K, D, D)."""

    def __init__(self, model: ModelParams) -> None:
        m = model.mixture
        self.locs = np.asarray(m.locs, np.float64)  # (K, D)
        scale = np.asarray(m.scale, np.float64)
        k, d = self.locs.shape
        self.dim = d
        self.cholesky = scale.ndim == 3
        if self.cholesky:
            self.tril = scale  # (K, D, D)
            log_det = np.log(np.abs(np.diagonal(scale, axis1=-2, axis2=-1))).sum(-1)
        else:
            self.scale = np.broadcast_to(scale, (k, d))  # (K, D)
            log_det = np.log(self.scale).sum(-1)
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(m.weights, np.float64))
        #: log w_k - D/2 log 2 pi - log |scale_k|, per component.
        self.const = log_w - 0.5 * d * math.log(2 * math.pi) - log_det

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> Classifier:
        return cls(ModelParams.loads(pathlib.Path(path).read_text()))

    def points(self, xs: list[Any]) -> np.ndarray:
        """(N, D) from decoded `x` fields: a number (D = 1) or a list of D numbers."""
        return np.array([x if isinstance(x, list) else [x] for x in xs], np.float64).reshape(
            len(xs), self.dim
        )

    def classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points (N, D): assignments (N,), probabilities (N, K), log p(x) (N,)."""
        diff = x[:, None, :] - self.locs[None]  # (N, K, D)
        if self.cholesky:
            z = np.linalg.solve(self.tril[None], diff[..., None])[..., 0]
        else:
            z = diff / self.scale[None]
        log_joint = self.const[None] - 0.5 * np.einsum("nkd,nkd->nk", z, z)
        top = log_joint.max(axis=1, keepdims=True)
        log_px = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
        probs = np.exp(log_joint - log_px[:, None])
        return probs.argmax(axis=1), probs, log_px


def answer(
    doc: dict[str, Any],
    assignment: int,
    probs: list[float],
    log_px: float,
    ts_in: float,
    topic: str,
    partition: int,
    offset: int,
) -> bytes:
    """The output record: the input's id and x, the verdict, and the input's coordinates."""
    return orjson.dumps(
        {
            "id": doc.get("id"),
            "x": doc.get("x"),
            "assignment": assignment,
            "probs": probs,
            "log_likelihood": log_px,
            "ts_in": ts_in,
            "source": {"topic": topic, "partition": partition, "offset": offset},
        }
    )


def pipe(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    classifier = Classifier.from_file(args.params)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # As the worker's: a fetch returns as soon as it has data, an idle one within 5 ms.
            "fetch.wait.max.ms": 5,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            **rdkafka_compression(args),
        }
    )
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer.subscribe([args.source])
    timeout = args.max_delay_ms / 1000
    last: dict[tuple[str, int], int] = {}
    try:
        while not stop:
            # Any: a consumed message's topic, partition, offset and value are never None.
            messages: list[Any] = consumer.consume(num_messages=args.max_batch, timeout=timeout)
            if not messages:
                continue
            for m in messages:
                if m.error() is not None:
                    raise KafkaException(m.error())
            docs = [orjson.loads(m.value()) for m in messages]
            assignments, probs, log_px = classifier.classify(
                classifier.points([d["x"] for d in docs])
            )
            rows, labels, logs = probs.tolist(), assignments.tolist(), log_px.tolist()
            offsets: dict[tuple[str, int], int] = {}
            for i, (m, doc) in enumerate(zip(messages, docs, strict=True)):
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                value = answer(
                    doc,
                    labels[i],
                    rows[i],
                    logs[i],
                    m.timestamp()[1] / 1000,
                    topic,
                    partition,
                    offset,
                )
                while True:
                    try:
                        producer.produce(
                            args.dest, value, m.key(), partition=partition, on_delivery=delivered
                        )
                        break
                    except BufferError:  # the local queue is full: serve delivery reports
                        producer.poll(0.05)
                offsets[(topic, partition)] = offset + 1
            # Every output acknowledged (or failed) before anything is committed.
            left = producer.flush(60)
            if left or failed:
                raise RuntimeError(
                    f"{left} output(s) undelivered, {len(failed)} failed ({failed[:1]}): "
                    "the batch is not committed"
                )
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )
            last.update(offsets)
        if last:  # the async commits settled before leaving the group
            try:
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()],
                    asynchronous=False,
                )
            except KafkaException as exc:  # e.g. partitions revoked since: theirs are not ours
                print(f"rdkafka pipe: final commit failed: {exc}", file=sys.stderr)
    finally:
        consumer.close()


def pipe_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every classifying pipe of bench.stream takes (this one and the Quix app)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--params", required=True, help="the model: a gmm-params JSON file")
    add_compression(parser)
    return parser


def add_compression(parser: argparse.ArgumentParser) -> None:
    """`--compression` and `--compression-level`: the codec of the pipe's record batches and
    its level (bench.stream passes the worker's, so that every system writes the same bytes)."""
    parser.add_argument("--compression", choices=COMPRESSIONS, default="none")
    parser.add_argument(
        "--compression-level", type=int, help="the codec's level (default: the client's)"
    )


def rdkafka_compression(args: argparse.Namespace) -> dict[str, Any]:
    """librdkafka's producer properties for `add_compression`'s options."""
    props: dict[str, Any] = {"compression.type": args.compression}
    if args.compression_level is not None:
        props["compression.level"] = args.compression_level
    return props


def main() -> None:
    parser = pipe_parser(__doc__)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        help="how long one consume waits for a batch to fill",
    )
    pipe(parser.parse_args())


if __name__ == "__main__":
    main()
