"""Records from any producer, as the real broker hands them over: batches compressed with every
codec Kafka has and written by librdkafka (confluent-kafka), transactions that abort, null values,
headers, and keys just under the broker's size limit. Each ends as exactly one assignment or one
dead letter, and the worker goes on."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from kafka_common.settings import KafkaSettings
from support.harness import (
    SEED_MODEL,
    Topics,
    batch_codecs,
    consume,
    count_records,
    create_worker_topics,
    produce,
    publish_model,
    run,
    wait_for,
)
from trainer.window import read_window

CODECS = ("gzip", "snappy", "lz4", "zstd")


def valid(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "x": float(i % 12)}).encode())
        for i in range(n)
    ]


def librdkafka_produce(
    bootstrap: str, topic: str, items: list[tuple[bytes, bytes]], codec: str
) -> None:
    """Writes items to partition 0 with librdkafka, in record batches compressed with codec."""
    # Queued in one call and held by a long linger until the flush, so they go as one batch:
    # produced one by one, a loaded machine's broker thread took a first few before the rest
    # were queued, and librdkafka sends a batch that compression cannot shrink uncompressed.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5000}
    )
    messages = [{"key": key, "value": value} for key, value in items]
    assert producer.produce_batch(topic, messages, partition=0) == len(items), messages
    assert producer.flush(30) == 0


def ids(records) -> list[str]:
    return sorted(json.loads(r.value)["id"] for r in records)


def committed(worker) -> float:
    return worker.metric("gmm_input_committed_offset")


def test_batches_of_every_codec_from_librdkafka_are_classified_exactly_once(
    kafka_bootstrap, start_worker
):
    topics = Topics("codecs")
    create_worker_topics(kafka_bootstrap, topics, partitions=1)
    # The model too comes in a compressed batch from another client.
    librdkafka_produce(
        kafka_bootstrap, topics.params, [(b"gmm", SEED_MODEL.dumps().encode())], "snappy"
    )
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1", GMM_OUTPUT_COMPRESSION="zstd")
    worker.wait_ready()
    sent = []
    for codec in CODECS:
        items = valid(50, codec)
        librdkafka_produce(kafka_bootstrap, topics.input, items, codec)
        sent += [k.decode() for k, _ in items]

    wait_for(lambda: committed(worker) == 200, 90, message="all 200 offsets committed")
    assert ids(consume(kafka_bootstrap, topics.output, 200)) == sorted(sent)
    assert count_records(kafka_bootstrap, topics.output) == 200  # none twice
    assert count_records(kafka_bootstrap, topics.dlq) == 0
    worker.check_alive()
    # The broker holds what the test says: each codec's batch in, the worker's codec out.
    # (Should librdkafka still split a codec's records, a part it cannot shrink goes as none.)
    codecs_in = batch_codecs(kafka_bootstrap, topics.input)
    assert list(dict.fromkeys(c for c in codecs_in if c != "none")) == list(CODECS), codecs_in
    assert batch_codecs(kafka_bootstrap, topics.params) == ["snappy"]
    assert set(batch_codecs(kafka_bootstrap, topics.output)) == {"zstd"}


@pytest.mark.parametrize("codec", CODECS)
def test_the_trainers_window_reads_every_codec(kafka_bootstrap, new_topic, codec):
    topic = new_topic(f"window-{codec}")
    librdkafka_produce(kafka_bootstrap, topic, valid(50, codec), codec)
    window = run(read_window(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, 1000))
    assert window.n_records == 50 and window.points.shape == (50, 1)
    assert sorted(window.points[:, 0].tolist()) == sorted(float(i % 12) for i in range(50))


def transactional_abort_then_commit(bootstrap: str, topic: str) -> Producer:
    """50 records in a transaction that aborts, then 50 in one that commits (librdkafka); the
    producer, for more."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"t-{topic}"})
    producer.init_transactions(30)
    for prefix, commit in (("aborted", False), ("committed", True)):
        producer.begin_transaction()
        for key, value in valid(50, prefix):
            producer.produce(topic, value=value, key=key, partition=0)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    return producer


def test_only_committed_records_are_classified_and_fitted(kafka_bootstrap, start_worker):
    topics = Topics("txn")
    create_worker_topics(kafka_bootstrap, topics, partitions=1)
    producer = transactional_abort_then_commit(kafka_bootstrap, topics.input)

    # The trainer's window holds exactly the committed 50: once the commit's marker is on the
    # partition (the coordinator writes it after commit_transaction returns), and never an
    # aborted record before or after.
    windows = []

    def committed_readable() -> bool:
        kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
        windows.append(run(read_window(kafka, topics.input, 1000)))
        assert windows[-1].n_records in (0, 50), windows[-1]
        return windows[-1].n_records == 50

    wait_for(committed_readable, 30, message="the committed transaction in the window")
    assert windows[-1].points.shape == (50, 1)

    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1")
    worker.wait_ready()
    # 50 + 1 marker per transaction: the committed offset passes the aborted records.
    wait_for(lambda: committed(worker) >= 101, 60, message="the committed records' offsets")
    outputs = consume(kafka_bootstrap, topics.output, 50)
    assert ids(outputs) == sorted(f"committed-{i}" for i in range(50))
    assert count_records(kafka_bootstrap, topics.output) == 50
    assert count_records(kafka_bootstrap, topics.dlq) == 0
    assert worker.metric("gmm_records_in_total") == 50

    # An open transaction holds what follows it, and the worker says so; once it commits,
    # its records are classified.
    producer.begin_transaction()
    for key, value in valid(10, "open"):
        producer.produce(topics.input, value=value, key=key, partition=0)
    producer.flush(30)
    wait_for(
        lambda: worker.metric("gmm_input_open_transaction_records") == 10,
        30,
        message="the open transaction's 10 offsets reported",
    )
    assert worker.metric("gmm_records_in_total") == 50
    producer.commit_transaction(30)
    wait_for(lambda: committed(worker) >= 112, 60, message="the 10 records once committed")
    assert count_records(kafka_bootstrap, topics.output) == 60
    wait_for(
        lambda: worker.metric("gmm_input_open_transaction_records") == 0,
        30,
        message="no open transaction any more",
    )


async def _produce_large(bootstrap: str, topic: str, items: list) -> None:
    # Room for a record just under the broker's limit (message.max.bytes, 1,048,588 bytes).
    # Idempotent: a send retried after a timeout on a loaded machine is not written twice.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=2 * 1024 * 1024,
    )
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(topic, value, key=key, partition=0, headers=headers)
    finally:
        await producer.stop()


def test_no_record_halts_the_worker_keys_near_the_limit_tombstones_and_headers(
    kafka_bootstrap, start_worker
):
    topics = Topics("anyrecord")
    create_worker_topics(kafka_bootstrap, topics, partitions=1)
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1")
    worker.wait_ready()

    huge_key = b"k" * 1_048_200  # the record is just under the broker's limit
    big_header = [("trace", b"h" * 900_000)]
    items = [(k, v, []) for k, v in valid(100, "a")]
    items += [
        (huge_key, b'{"x":"a"}', []),  # bad value, huge key
        (huge_key[:-20], b'{"id": "hk", "x": 3.0}', []),  # valid value, huge key
        (b"tomb", None, []),  # a tombstone
        (b"hdr", b'{"id": "hdr", "x": 1.0}', big_header),  # valid, with large headers
        (b"hdr2", b'{"id": "hdr2", "x": 2.0}', [("a", b""), ("a", b"dup"), ("b", None)]),
    ]
    items += [(k, v, []) for k, v in valid(100, "b")]
    run(_produce_large(kafka_bootstrap, topics.input, items))

    wait_for(lambda: committed(worker) >= 205, 90, message="all 205 offsets committed")
    assert committed(worker) == 205
    assert count_records(kafka_bootstrap, topics.output) == 203  # 200 + hk + hdr + hdr2, once
    assert count_records(kafka_bootstrap, topics.dlq) == 2
    outputs = {json.loads(r.value)["id"]: r for r in consume(kafka_bootstrap, topics.output, 203)}
    assert len(outputs) == 203 and {"hk", "hdr", "hdr2"} <= set(outputs)
    cut = outputs["hk"]
    assert cut.key == huge_key[:4096]
    doc = json.loads(cut.value)
    assert doc["key_truncated"] and doc["key_size"] == len(huge_key) - 20
    assert doc["key_sha256"] == hashlib.sha256(huge_key[:-20]).hexdigest()
    assert "key_truncated" not in json.loads(outputs["a-0"].value)  # short keys as they were
    assert outputs["a-0"].key == b"a-0"

    letters = {json.loads(r.value)["reason"]: r for r in consume(kafka_bootstrap, topics.dlq, 2)}
    assert set(letters) == {"not_numeric", "tombstone"}
    bad = json.loads(letters["not_numeric"].value)
    assert letters["not_numeric"].key == huge_key[:4096]
    assert bad["key_size"] == len(huge_key) and bad["payload_text"] == '{"x":"a"}'
    assert bad["key_sha256"] == hashlib.sha256(huge_key).hexdigest()
    tombstone = json.loads(letters["tombstone"].value)
    assert letters["tombstone"].key == b"tomb" and tombstone["payload_size"] == 0
    assert tombstone["source"] == {"topic": topics.input, "partition": 0, "offset": 102}
    assert worker.metric("gmm_deadlettered_total", reason="tombstone") == 1
    assert worker.metric("gmm_delivery_errors_total") == 0

    produce(kafka_bootstrap, topics.input, valid(20, "c"))  # and it goes on
    wait_for(lambda: committed(worker) == 225, 60, message="the next records")
    assert count_records(kafka_bootstrap, topics.output) == 223
    worker.check_alive()


@pytest.mark.parametrize(("flag", "codec"), [([], "zstd"), (["--compression", "lz4"], "lz4")])
def test_gmm_produce_compresses_as_asked(kafka_bootstrap, new_topic, flag, codec):
    topic = new_topic("produce")
    done = subprocess.run(
        [sys.executable, "-m", "producer.cli", "--topic", topic, "--count", "300", *flag],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert set(batch_codecs(kafka_bootstrap, topic)) == {codec}
    window = run(read_window(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, 1000))
    assert window.n_records == 300 and window.points.shape == (300, 1)


def test_a_compression_bomb_and_a_header_key_that_is_not_utf8_never_stop_a_reader(
    kafka_bootstrap, start_worker
):
    """A record of 40 MB of zeros in a ~2 KB zstd batch (librdkafka), past the 16 MiB a batch
    may inflate to, and records whose header name is not UTF-8 (kcat sends raw bytes): aiokafka
    alone stops at each, at every restart."""
    topics = Topics("bomb")
    create_worker_topics(kafka_bootstrap, topics, partitions=1)
    librdkafka_produce(kafka_bootstrap, topics.input, valid(50, "a"), "zstd")
    bomb = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "compression.type": "zstd",
            "message.max.bytes": 100_000_000,
        }
    )
    bomb.produce(topics.input, value=b"0" * 40_000_000, key=b"bomb", partition=0)
    assert bomb.flush(60) == 0
    lines = "".join(f'{{"id": "h-{i}", "x": {i}.5}}\n' for i in range(3)).encode()
    subprocess.run(
        [
            *("kcat", "-P", "-b", kafka_bootstrap, "-t", topics.input, "-p", "0"),
            *("-H", "\udcff\udcfe=v", "-H", "ok=1"),  # the name's bytes: ff fe
        ],
        input=lines,
        check=True,
        timeout=60,
    )
    librdkafka_produce(kafka_bootstrap, topics.input, valid(50, "b"), "zstd")
    assert batch_codecs(kafka_bootstrap, topics.input)[1] == "zstd"

    window = run(read_window(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics.input, 1000))
    assert window.points.shape == (103, 1) and window.invalid == {"undecodable": 1}

    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1")
    worker.wait_ready()
    wait_for(lambda: committed(worker) == 104, 90, message="all 104 offsets committed")
    assert ids(consume(kafka_bootstrap, topics.output, 103)) == sorted(
        [f"a-{i}" for i in range(50)] + [f"b-{i}" for i in range(50)] + ["h-0", "h-1", "h-2"]
    )
    assert count_records(kafka_bootstrap, topics.output) == 103
    (letter,) = consume(kafka_bootstrap, topics.dlq, 1)
    doc = json.loads(letter.value)
    assert doc["reason"] == "undecodable" and doc["source"]["offset"] == 50
    assert doc["error"].startswith("offsets 50-50 of a record batch could not be read")
    assert "GMM_FETCH_DECOMPRESSED_MAX_BYTES" in doc["error"]
    assert worker.metric("gmm_deadlettered_total", reason="undecodable") == 1
    worker.check_alive()


def test_micro_batches_are_bounded_in_bytes_not_only_in_records(kafka_bootstrap, start_worker):
    """A backlog of 20 KB records waiting before the worker starts: with GMM_MAX_BATCH_BYTES at
    64 KiB no batch holds more than 3 of them (one fetch brings about 50), and every record is
    classified once."""
    topics = Topics("bytes")
    create_worker_topics(kafka_bootstrap, topics, partitions=1)
    pad = "p" * 20_000
    items = [
        (f"r-{i}".encode(), json.dumps({"id": f"r-{i}-{pad}", "x": float(i % 12)}).encode())
        for i in range(300)
    ]
    produce(kafka_bootstrap, topics.input, items)
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1", GMM_MAX_BATCH_BYTES="65536")
    worker.wait_ready()
    wait_for(lambda: committed(worker) == 300, 90, message="all 300 offsets committed")
    assert count_records(kafka_bootstrap, topics.output) == 300
    batches = worker.metric("gmm_batch_size_records_count")
    assert batches >= 100  # 3 records a batch at most
    assert worker.metric("gmm_batch_size_records_bucket", le="4.0") == batches
    assert worker.metric("gmm_batch_size_records_sum") == 300
