"""A baseline for bench/stream: the worker's job as a Quix Streams app, the way its users write it.

A `StreamingDataFrame` over the input topic (JSON values, decoded by Quix with orjson), one
function per record that classifies the point with bench/rdkafka_pipe.py's numpy closed form
(Quix hands an app one record at a time) and returns the assignment-like answer (`id`, `x`,
`assignment`, `probs`, `log_likelihood`, and the input's `ts_in` and `source`), and `to_topic`
on the output topic (JSON, the input's key; Quix's murmur2 partitioner places it). Quix's own
defaults otherwise: at-least-once processing (it commits every 5 s, after its producer has
flushed), an idempotent acks=all producer, a read_committed consumer in the group starting from
the earliest offset. Runs until stopped (SIGTERM).

Needs quixstreams (`pip install -e '.[bench]'`), which requires confluent-kafka < 2.13 and so
cannot share the dev venv (confluent-kafka 2.16.1): `make venv-quix` builds `.venv-quix`, and
bench/stream.py runs this module with that interpreter.

    python -m bench.quix_pipe --bootstrap HOST:PORT --source T --dest T --group G \
        --params model.json [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from bench.rdkafka_pipe import Classifier, pipe_parser, rdkafka_compression


def build_app(args: argparse.Namespace) -> Any:
    from quixstreams import Application, message_context

    classifier = Classifier.from_file(args.params)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        consumer_extra_config={"isolation.level": "read_committed"},
        producer_extra_config=rdkafka_compression(args),
        state_dir=args.state_dir or tempfile.mkdtemp(prefix="quix-pipe-"),
        loglevel="WARNING",
    )
    source = app.topic(args.source, key_deserializer="bytes", value_deserializer="json")
    dest = app.topic(args.dest, key_serializer="bytes", value_serializer="json")

    def classify(doc: dict[str, Any], _key: Any, timestamp: int, _headers: Any) -> dict[str, Any]:
        assignment, probs, log_px = classifier.classify(classifier.points([doc["x"]]))
        # The input's coordinates, as the worker's assignment record carries them.
        ctx = message_context()
        return {
            "id": doc.get("id"),
            "x": doc.get("x"),
            "assignment": int(assignment[0]),
            "probs": probs[0].tolist(),
            "log_likelihood": float(log_px[0]),
            "ts_in": timestamp / 1000,
            "source": {"topic": ctx.topic, "partition": ctx.partition, "offset": ctx.offset},
        }

    sdf = app.dataframe(source)
    sdf = sdf.apply(classify, metadata=True)
    sdf.to_topic(dest)
    return app


def main() -> None:
    parser = pipe_parser(__doc__)
    parser.add_argument("--state-dir", help="Quix's state directory (default: a new temp dir)")
    build_app(parser.parse_args()).run()


if __name__ == "__main__":
    main()
