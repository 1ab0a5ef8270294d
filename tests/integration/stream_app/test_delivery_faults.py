"""Delivery under inputs and failures of the real broker: a record of any size, an output the
broker refuses, a broker that will not acknowledge for a while."""

from __future__ import annotations

import base64
import json
import random
import time

import pytest

from support.harness import (
    SEED_MODEL,
    Broker,
    Topics,
    Worker,
    consume,
    count_records,
    create_worker_topics,
    produce,
    publish_model,
    wait_for,
)


def valid(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "x": float(i % 12)}).encode())
        for i in range(n)
    ]


def committed(worker) -> float:
    return worker.metric("gmm_input_committed_offset")


def test_a_huge_record_gets_one_bounded_dead_letter_and_the_stream_goes_on(
    kafka_bootstrap, start_worker
):
    topics = Topics("poison")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1")
    worker.wait_ready()
    huge = json.dumps({"id": "big", "x": [1.0] * 120_000}).encode()
    assert len(huge) > 480_000
    produce(kafka_bootstrap, topics.input, [*valid(100, "a"), (b"big", huge), *valid(100, "b")])

    wait_for(lambda: committed(worker) == 201, 60, message="all 201 offsets committed")
    assert count_records(kafka_bootstrap, topics.output) == 200  # none twice
    assert count_records(kafka_bootstrap, topics.dlq) == 1
    (letter,) = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.dlq, 1)]
    assert letter["reason"] == "oversized" and letter["payload_size"] == len(huge)
    assert letter["payload_truncated"] and len(letter["payload_text"]) == 4096
    assert letter["payload_text"] == huge[:4096].decode()
    assert worker.metric("gmm_delivery_errors_total") == 0

    produce(kafka_bootstrap, topics.input, valid(50, "c"))  # and it goes on
    wait_for(lambda: committed(worker) == 251, 60, message="the next records")
    assert count_records(kafka_bootstrap, topics.output) == 250
    # No batch is fetched after the last commit: only the lag timer can bring the gauge to 0.
    wait_for(lambda: worker.metric("gmm_input_lag_records") == 0, 30, message="lag 0")


def test_an_output_the_broker_refuses_becomes_a_small_dead_letter(kafka_bootstrap, start_worker):
    topics = Topics("refused")
    # The dead-letter topic takes record batches of at most 1,500 bytes: a dead letter carrying
    # 3,000 bytes of random payload is refused by the broker itself, compressed or not.
    create_worker_topics(kafka_bootstrap, topics, partitions=1, dlq={"max.message.bytes": "1500"})
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_INPUT_PARTITIONS="1")
    worker.wait_ready()
    junk = base64.b64encode(random.Random(0).randbytes(2250))  # 3,000 bytes, incompressible
    produce(
        kafka_bootstrap,
        topics.input,
        [*valid(50, "a"), (b"junk", junk), *valid(50, "b"), (b"small", b"nope")],
    )

    wait_for(lambda: committed(worker) == 102, 60, message="all 102 offsets committed")
    assert count_records(kafka_bootstrap, topics.output) == 100
    letters = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.dlq, 2)]
    letters.sort(key=lambda d: d["source"]["offset"])  # a resent output may come later
    assert [d["reason"] for d in letters] == ["output_too_large", "not_json"]
    assert letters[0]["original_reason"] == "not_json"
    assert letters[0]["source"] == {"topic": topics.input, "partition": 0, "offset": 50}
    # The refusal spent the producer's sequence numbers; the next dead letter still got through.
    assert letters[1]["payload_text"] == "nope"
    assert count_records(kafka_bootstrap, topics.dlq) == 2
    assert worker.metric("gmm_delivery_errors_total", reason="rejected") >= 1
    assert worker.metric("gmm_deadlettered_total", reason="output_too_large") == 1


@pytest.mark.slow
def test_a_broker_that_stops_answering_makes_the_worker_unready_then_it_recovers(tmp_path):
    broker = Broker(tmp_path / "broker").up()
    topics = Topics("stuck")
    worker = None
    try:
        publish_model(broker.bootstrap, topics.params, SEED_MODEL)
        # A batch waits up to 8 s to fill, so the records below are fetched well before
        # their batch is classified and sent: to a broker that no longer answers.
        worker = Worker(
            broker.bootstrap,
            topics,
            tmp_path,
            GMM_MAX_BATCH="4096",
            GMM_MAX_DELAY_MS="8000",
            GMM_DELIVERY_STUCK_S="2",
        ).start()
        worker.wait_ready()
        wait_for(lambda: worker.metric("gmm_assigned_partitions") == 2, 60, message="assigned")
        produce(broker.bootstrap, topics.input, valid(500, "s"))
        # Positions the fault (nothing observable marks a fetched, not yet closed batch):
        # fetched (milliseconds; 2 s allowed), not yet sent (8 s after the first record).
        time.sleep(2.0)
        broker.pause()
        try:
            wait_for(lambda: worker.ready_status() == 503, 30, message="/ready 503 while stuck")
            reason = json.loads(worker.get("/ready")[1])["reason"]
            assert reason.startswith("delivery stuck for"), reason
            assert worker.metric("gmm_delivery_stuck_seconds") >= 2
        finally:
            broker.resume()
        wait_for(lambda: committed(worker) == 500, 90, message="all 500 offsets committed")
        outputs = [json.loads(r.value)["id"] for r in consume(broker.bootstrap, topics.output, 500)]
        assert sorted(outputs) == sorted(f"s-{i}" for i in range(500))  # each once
        wait_for(lambda: worker.ready_status() == 200, 30, message="/ready 200 again")
        assert worker.metric("gmm_delivery_stuck_seconds") == 0
    finally:
        if worker is not None:
            worker.stop()
        broker.down()
