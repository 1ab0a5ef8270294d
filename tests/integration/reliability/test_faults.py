"""Faults against the real broker: killed workers, poisoned parameters, a trainer that is down.

Marked slow: `pytest -m "not slow"` is the quick suite; CI runs them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer

from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import (
    SEED_MODEL,
    Topics,
    consume,
    count_records,
    produce,
    publish_model,
    run,
    wait_for,
)

pytestmark = pytest.mark.slow


def points(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"{prefix}-{i}".encode(),
            json.dumps({"id": f"{prefix}-{i}", "x": (i % 23) - 5.0}).encode(),
        )
        for i in range(n)
    ]


def paced_producer(bootstrap: str, topic: str, n: int, rate: float, prefix: str):
    """gmm-produce in the background: n records at `rate`, ids `<prefix>-<i>`."""
    command = ["--topic", topic, "--count", str(n), "--rate", str(rate), "--id-prefix", prefix]
    return subprocess.Popen(
        [sys.executable, "-m", "producer.cli", *command],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )


def versioned(version: int) -> ModelParams:
    return ModelParams(
        version,
        MixtureParams([0.4, 0.6], [[0.0], [10.0]], [1.0 + version / 10]),
        FitMetadata(fitted_at="2026-01-01T00:00:00+00:00"),
    )


def output_ids(bootstrap: str, topic: str) -> list[str]:
    n = count_records(bootstrap, topic)
    return [json.loads(r.value)["id"] for r in consume(bootstrap, topic, n, timeout=120)]


def wait_covered(bootstrap: str, topic: str, expected: set[str], timeout: float) -> list[str]:
    """Waits until every expected id has an output; returns all output ids (duplicates kept)."""
    deadline = time.monotonic() + timeout
    while True:
        if count_records(bootstrap, topic) >= len(expected):
            ids = output_ids(bootstrap, topic)
            if expected <= set(ids):
                return ids
        if time.monotonic() > deadline:
            missing = len(expected - set(output_ids(bootstrap, topic)))
            raise AssertionError(f"{missing} of {len(expected)} inputs never got an assignment")
        time.sleep(1)


async def _send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"gmm")
    finally:
        await producer.stop()


def test_poisoned_parameters_are_ignored(kafka_bootstrap, start_worker):
    topics = Topics("poison")
    publish_model(kafka_bootstrap, topics.params, versioned(1))
    worker = start_worker(topics)
    worker.wait_ready()
    nan_weights = json.loads(versioned(2).dumps())
    nan_weights["weights"] = [float("nan"), 1.0]
    wrong_shapes = json.loads(versioned(3).dumps())
    wrong_shapes["locs"] = [0.0, 1.0, 2.0]
    run(
        _send_raw(
            kafka_bootstrap,
            topics.params,
            [b"not json {", json.dumps(nan_weights).encode(), json.dumps(wrong_shapes).encode()],
        )
    )
    wait_for(lambda: worker.metric("gmm_params_rejected_total") == 3, 30, message="rejections")
    assert worker.metric("gmm_params_rejected_total", reason="not_json") == 1
    assert worker.metric("gmm_model_version") == 1

    produce(kafka_bootstrap, topics.input, points(200, "after-poison"))
    outputs = consume(kafka_bootstrap, topics.output, 200, timeout=60)
    assert len(outputs) == 200 and {json.loads(r.value)["model_version"] for r in outputs} == {1}
    publish_model(kafka_bootstrap, topics.params, versioned(4))  # the follower is still alive
    wait_for(lambda: worker.metric("gmm_model_version") == 4, 30, message="version 4")


def test_worker_restarted_while_the_trainer_is_down_recovers_the_newest_model(
    kafka_bootstrap, start_worker
):
    topics = Topics("recover")
    for version in (1, 2):
        publish_model(kafka_bootstrap, topics.params, versioned(version))
    first = start_worker(topics)
    assert first.wait_ready()["model_version"] == 2
    produce(kafka_bootstrap, topics.input, points(300, "a"))
    wait_for(lambda: first.metric("gmm_assignments_out_total") == 300, 60, message="first batch")
    first.stop(signal.SIGKILL)

    second = start_worker(topics)  # no trainer anywhere: the model comes from the compacted topic
    assert second.wait_ready()["model_version"] == 2
    produce(kafka_bootstrap, topics.input, points(300, "b"))
    ids = wait_covered(
        kafka_bootstrap, topics.output, {f"{p}-{i}" for p in "ab" for i in range(300)}, timeout=90
    )
    docs = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, len(ids))]
    assert {d["model_version"] for d in docs} == {2}


@pytest.mark.timeout(900)  # its own waits, each with a message, add up past 300 s
def test_sigkill_midstream_then_restart_loses_nothing(
    kafka_bootstrap, start_worker, record_property
):
    topics = Topics("kill")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics)
    worker.wait_ready()
    n = 100_000
    producer = paced_producer(kafka_bootstrap, topics.input, n, 10_000, "k")
    wait_for(
        lambda: worker.metric("gmm_assignments_out_total") >= 30_000,
        120,
        interval=0.2,
        message="30k outputs",
    )
    worker.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    assert count_records(kafka_bootstrap, topics.output) < n  # killed mid-stream
    assert producer.wait(60) == 0
    restarted = start_worker(topics)
    restarted.wait_ready()
    ids = wait_covered(kafka_bootstrap, topics.output, {f"k-{i}" for i in range(n)}, timeout=300)
    duplicates = len(ids) - len(set(ids))
    record_property("duplicates", duplicates)
    record_property("recovery_seconds", round(time.monotonic() - t_kill, 1))
    print(
        f"\nSIGKILL at >=30k of {n}: 0 lost, {duplicates} duplicated (re-delivered since "
        f"the last commit), all covered {time.monotonic() - t_kill:.1f}s after the kill"
    )
    assert len(set(ids)) == n


def test_two_workers_one_killed_its_partitions_move(kafka_bootstrap, start_worker, record_property):
    topics = Topics("failover")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    env = {"GMM_INPUT_PARTITIONS": "4", "GMM_SESSION_TIMEOUT_S": "6"}
    a = start_worker(topics, **env)
    b = start_worker(topics, **env)
    a.wait_ready()
    b.wait_ready()
    wait_for(
        lambda: (
            a.metric("gmm_assigned_partitions") + b.metric("gmm_assigned_partitions") == 4
            and min(a.metric("gmm_assigned_partitions"), b.metric("gmm_assigned_partitions")) > 0
        ),
        60,
        message="the group settled over both workers",
    )
    n = 100_000
    producer = paced_producer(kafka_bootstrap, topics.input, n, 10_000, "f")
    wait_for(
        lambda: (
            a.metric("gmm_assignments_out_total") > 5_000
            and b.metric("gmm_assignments_out_total") > 5_000
        ),
        120,
        message="both workers busy",
    )
    a.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    assert count_records(kafka_bootstrap, topics.output) < n  # killed mid-stream
    assert producer.wait(60) == 0
    ids = wait_covered(kafka_bootstrap, topics.output, {f"f-{i}" for i in range(n)}, timeout=240)
    record_property("duplicates", len(ids) - len(set(ids)))
    print(
        f"\none of two workers killed: 0 lost, {len(ids) - len(set(ids))} duplicated, "
        f"covered {time.monotonic() - t_kill:.1f}s after the kill"
    )
    partitions = {
        json.loads(r.value)["source"]["partition"]
        for r in consume(kafka_bootstrap, topics.output, len(ids))
    }
    assert partitions == {0, 1, 2, 3}


def test_workers_joining_and_leaving_midstream_lose_and_repeat_nothing(
    kafka_bootstrap, start_worker, record_property
):
    """Graceful rebalances: a partition changes hands only once all it fetched is committed."""
    topics = Topics("handover")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    # Graceful hand-overs only: a session long enough that a busy member is never dropped.
    env = {"GMM_INPUT_PARTITIONS": "4", "GMM_SESSION_TIMEOUT_S": "10"}
    a = start_worker(topics, **env)
    a.wait_ready()
    # Two streams: the first is under way when b joins; the second starts once b holds
    # partitions, so b has records to deliver (and to leave with) however slowly it started.
    first, second = 100_000, 60_000
    producers = [paced_producer(kafka_bootstrap, topics.input, first, 4_000, "h")]
    try:
        wait_for(lambda: a.metric("gmm_assignments_out_total") > 2_000, 60, message="a busy")
        b = start_worker(topics, **env)  # joins: a gives up partitions mid-stream
        b.wait_ready()
        wait_for(lambda: b.metric("gmm_assigned_partitions") > 0, 120, message="b assigned")
        producers.append(paced_producer(kafka_bootstrap, topics.input, second, 4_000, "j"))
        wait_for(lambda: b.metric("gmm_assignments_out_total") > 500, 60, message="b busy")
        b.stop(timeout=60)  # SIGTERM: b leaves mid-stream, its partitions go back to a
        assert [p.wait(120) for p in producers] == [0, 0]
    finally:
        for p in producers:
            p.kill()
    expected = {f"h-{i}" for i in range(first)} | {f"j-{i}" for i in range(second)}
    n = len(expected)
    ids = wait_covered(kafka_bootstrap, topics.output, expected, timeout=120)
    duplicates = len(ids) - len(set(ids))
    record_property("duplicates", duplicates)
    print(f"\nworker joined and left mid-stream: 0 of {n} lost, {duplicates} duplicated")
    # A SIGKILL after the graceful stop's 60 s would repeat what b delivered uncommitted.
    assert duplicates == 0, f"b exited with {b.proc.returncode}:\n{b.log_tail()}"


def test_garbage_flood_mixed_with_valid_records(kafka_bootstrap, start_worker):
    import random

    topics = Topics("flood")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics)
    worker.wait_ready()
    rnd = random.Random(7)
    garbage = []
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            payload = rnd.randbytes(rnd.randint(0, 80))
        elif kind == 1:
            payload = json.dumps([rnd.random() for _ in range(rnd.randint(0, 3))]).encode()
        elif kind == 2:
            payload = json.dumps({"x": rnd.choice(["", None, {}, [None], True, "1"])}).encode()
        elif kind == 3:
            payload = json.dumps({"x": [rnd.random(), rnd.random()]}).encode()  # wrong dimension
        else:
            payload = b'{"x": ' + rnd.choice([b"1e999", b"-1e400", b"NaN", b"1e20"]) + b"}"
        garbage.append((f"junk-{i}".encode(), payload))
    valid = points(5_000, "ok")
    mixed = garbage + valid
    rnd.shuffle(mixed)
    produce(kafka_bootstrap, topics.input, mixed)

    outputs = consume(kafka_bootstrap, topics.output, 5_000, timeout=120)
    dead = consume(kafka_bootstrap, topics.dlq, 10_000, timeout=120)
    assert sorted(json.loads(r.value)["id"] for r in outputs) == sorted(
        k.decode() for k, _ in valid
    )
    assert len(dead) == 10_000
    assert all(r.key.startswith(b"junk-") and json.loads(r.value)["reason"] for r in dead)
    assert worker.alive() and worker.get("/health")[0] == 200
