"""The stream worker against the real broker: classification, model arrival, swaps, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mixture.evaluate import component_log_pdf
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import (
    SEED_MODEL,
    Topics,
    consume,
    count_records,
    produce,
    publish_model,
    wait_for,
)


def produce_in_background(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float
) -> threading.Thread:
    """Produces `records` at `rate` records/s (in chunks of a tenth of a second) on a thread."""

    def paced() -> None:
        chunk, t0 = max(1, int(rate / 10)), time.time()
        for i in range(0, len(records), chunk):
            produce(bootstrap, topic, records[i : i + chunk])
            time.sleep(max(0.0, t0 + (i + chunk) / rate - time.time()))

    thread = threading.Thread(target=paced)
    thread.start()
    return thread


def ties(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    """n records at the x where the seed model's two components are equally likely."""
    m = SEED_MODEL.mixture
    (w0, w1), (l0, l1), s = m.weights, [loc[0] for loc in m.locs], m.scale[0]
    x_mid = (l0 + l1) / 2 + s**2 * np.log(w1 / w0) / (l0 - l1)
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "x": x_mid}).encode())
        for i in range(n)
    ]


def points(n: int, prefix: str, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    xs = np.where(rng.random(n) < 0.4, rng.normal(0.5, 1.0, n), rng.normal(11.0, 1.0, n))
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "x": float(x)}).encode())
        for i, x in enumerate(xs)
    ]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_10k_from_kcat_are_classified_exactly_once(kafka_bootstrap, start_worker, tmp_path):
    topics = Topics("kcat")
    worker = start_worker(topics)
    worker.wait_serving()
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker.wait_ready()

    inputs = points(10_000, "k")
    lines = "".join(f"{k.decode()}\t{v.decode()}\n" for k, v in inputs)
    subprocess.run(
        ["kcat", "-P", "-b", kafka_bootstrap, "-t", topics.input, "-K", "\t"],
        input=lines.encode(),
        check=True,
        timeout=60,
    )
    outputs = consume(kafka_bootstrap, topics.output, 10_000, timeout=90)
    assert len(outputs) == 10_000
    # Nothing more: the worker counted exactly 10,000 in and 10,000 out.
    wait_for(lambda: worker.metric("gmm_assignments_out_total") == 10_000, 10, message="metrics")
    assert worker.metric("gmm_records_in_total") == 10_000
    assert count_records(kafka_bootstrap, topics.output) == 10_000

    docs = {json.loads(r.value)["id"]: (r.key, json.loads(r.value)) for r in outputs}
    assert len(docs) == 10_000
    assert all(key == doc["id"].encode() for key, doc in docs.values())  # keys kept

    # Classes equal gmm-classify's on the same parameters.
    params = tmp_path / "params.json"
    params.write_text(SEED_MODEL.dumps())
    offline = subprocess.run(
        [sys.executable, "-m", "stream_app.classify_cli", "--params", str(params)],
        input="".join(v.decode() + "\n" for _, v in inputs),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    expected = {d["id"]: d["assignment"] for d in map(json.loads, offline.stdout.splitlines())}
    assert {i: doc["assignment"] for i, (_, doc) in docs.items()} == expected
    sample = next(iter(docs.values()))[1]
    assert set(sample) >= {
        "id",
        "x",
        "assignment",
        "probs",
        "log_likelihood",
        "model_version",
        "ts_in",
        "ts_out",
        "source",
    }
    assert sample["model_version"] == 1


def test_records_sent_before_any_model_wait_for_one(kafka_bootstrap, start_worker):
    topics = Topics("nomodel")
    worker = start_worker(topics)
    worker.wait_serving()
    status, body = worker.get("/ready")
    assert status == 503 and "no model" in body

    produce(kafka_bootstrap, topics.input, points(500, "early"))
    # The worker is up and the records are in Kafka, but nothing is classified without a model.
    wait_for(lambda: count_records(kafka_bootstrap, topics.input) == 500, message="input")
    assert worker.ready_status() == 503
    assert count_records(kafka_bootstrap, topics.output) == 0

    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    assert worker.wait_ready()["model_version"] == 1
    outputs = consume(kafka_bootstrap, topics.output, 500, timeout=60)
    assert sorted(json.loads(r.value)["id"] for r in outputs) == sorted(
        f"early-{i}" for i in range(500)
    )


def test_new_version_midstream_swaps_promptly_without_compiling(kafka_bootstrap, start_worker):
    topics = Topics("swap")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics)
    compiled = worker.wait_ready()["compilations"]

    n = 12_000
    publish_at: list[float] = []
    producer = produce_in_background(kafka_bootstrap, topics.input, points(n, "s"), 3_000.0)
    wait_for(lambda: worker.metric("gmm_records_in_total") >= n / 3, 60, message="first third")
    v2 = ModelParams(
        2,
        MixtureParams([0.5, 0.5], [[0.0], [12.0]], [1.5]),
        FitMetadata(fitted_at="2026-01-02T00:00:00+00:00"),
    )
    publish_model(kafka_bootstrap, topics.params, v2)
    publish_at.append(time.time())
    producer.join()

    outputs = consume(kafka_bootstrap, topics.output, n, timeout=90)
    docs = [json.loads(r.value) for r in outputs]
    ids = [d["id"] for d in docs]
    assert len(ids) == n and len(set(ids)) == n  # none skipped, none twice
    # Two seconds: the fetch, the install and the batch already under way (milliseconds when
    # quiet), with room for a loaded host's scheduling.
    late = [d for d in docs if d["ts_out"] > publish_at[0] + 2.0]
    assert late, "the stream should run past the swap"
    assert all(d["model_version"] == 2 for d in late)
    assert {d["model_version"] for d in docs} == {1, 2}
    assert worker.metric("gmm_compilations_total") == compiled  # the swap compiled nothing
    assert worker.metric("gmm_model_version") == 2


BAD_KINDS = {
    "not_json": lambda i: b"not json %d" % i,
    "not_object": lambda i: b"[%d]" % i,
    "missing_x": lambda i: b'{"id": "m-%d"}' % i,
    "not_numeric": lambda i: b'{"x": "seven-%d"}' % i,
    "not_finite": lambda i: b'{"x": 1e999, "n": %d}' % i,
    "wrong_dim": lambda i: b'{"x": [1, %d]}' % i,
    "oversized": lambda i: b'{"x": 1, "pad": "' + b"a" * 70_000 + b'"}',
}


def test_malformed_records_are_dead_lettered_and_the_rest_classified(kafka_bootstrap, start_worker):
    topics = Topics("garbage")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics)
    worker.wait_ready()

    good = points(10_000, "g")
    bad = [
        (f"bad-{kind}-{i}".encode(), make(i))
        for kind, make in BAD_KINDS.items()
        for i in range(1_000)
    ]
    rng = np.random.default_rng(5)
    mixed = good + bad
    order = rng.permutation(len(mixed))
    produce(kafka_bootstrap, topics.input, [mixed[i] for i in order])

    n_bad = len(bad)
    outputs = consume(kafka_bootstrap, topics.output, 10_000, timeout=120)
    dead = consume(kafka_bootstrap, topics.dlq, n_bad, timeout=60)
    assert sorted(json.loads(r.value)["id"] for r in outputs) == sorted(k.decode() for k, _ in good)
    assert len(dead) == n_bad
    by_reason: dict[str, int] = {}
    for r in dead:
        doc = json.loads(r.value)
        by_reason[doc["reason"]] = by_reason.get(doc["reason"], 0) + 1
        assert r.key.decode().startswith(f"bad-{doc['reason']}-")  # the reason fits the record
        assert doc["source"]["topic"] == topics.input and doc["error"]
    assert by_reason == {kind: 1_000 for kind in BAD_KINDS}
    assert worker.get("/health")[0] == 200
    for kind in BAD_KINDS:
        assert worker.metric("gmm_deadlettered_total", reason=kind) == 1_000


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_metrics_pass_promtool(kafka_bootstrap, start_worker):
    topics = Topics("promtool")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics)
    worker.wait_ready()
    produce(kafka_bootstrap, topics.input, points(100, "m"))
    wait_for(lambda: worker.metric("gmm_assignments_out_total") == 100, 60, message="outputs")
    text = worker.metrics_text()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for name in (
        "gmm_records_in_total",
        "gmm_batch_size_records_bucket",
        "gmm_inference_seconds_bucket",
        "gmm_end_to_end_seconds_bucket",
        "gmm_model_version",
        "gmm_model_age_seconds",
        "gmm_model_swaps_total",
        "gmm_compilations_total",
        "gmm_recent_log_likelihood_mean",
        "faust_messages_received",
    ):
        assert name in text


@pytest.mark.parametrize("temperature", [0, 1])
def test_temperature_zero_is_the_map_and_one_samples(kafka_bootstrap, start_worker, temperature):
    topics = Topics(f"temp{temperature}")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    worker = start_worker(topics, GMM_TEMPERATURE=str(temperature), GMM_MAX_BATCH="64")
    worker.wait_ready()
    n = 2_000
    produce(kafka_bootstrap, topics.input, ties(n, "t"))
    outs = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, n, timeout=60)]
    assert len(outs) == n
    np.testing.assert_allclose([o["probs"] for o in outs], 0.5, atol=0.01)
    share = np.mean([o["assignment"] for o in outs])
    if temperature == 0:
        assert share in (0.0, 1.0)  # the MAP: one answer for one x
    else:
        assert 0.4 < share < 0.6  # a posterior draw per record, each with its own key


def test_a_new_layout_compiles_off_the_serving_path(kafka_bootstrap, start_worker, record_property):
    """K=2, D=1 serving; K=3, D=2 published mid-stream. A record is validated against, and
    classified by, the model current when its batch starts: old-D records in batches that start
    after the swap are dead-lettered as wrong_dim. Nothing is lost, and the stream never waits
    for the new layout's compilation."""
    topics = Topics("layout")
    publish_model(kafka_bootstrap, topics.params, SEED_MODEL)
    # Five padding sizes for the new layout: a compilation long enough to show up as a stall.
    worker = start_worker(topics, GMM_MAX_BATCH="4096")
    worker.wait_ready()

    n = 6_000
    published: list[float] = []
    producer = produce_in_background(kafka_bootstrap, topics.input, points(n, "d1"), 1_500.0)
    wait_for(lambda: worker.metric("gmm_records_in_total") >= n / 4, 60, message="a quarter")
    wide = ModelParams(
        2,
        MixtureParams([0.2, 0.3, 0.5], [[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]], [1.0, 1.0]),
        FitMetadata(fitted_at="2026-01-02T00:00:00+00:00"),
    )
    publish_model(kafka_bootstrap, topics.params, wide)
    published.append(time.time())
    wait_for(lambda: worker.metric("gmm_model_version") == 2, 120, message="v2 served")
    compile_s = time.time() - published[0]  # fetch, compile and install, while d1 streams on
    producer.join()
    new = [
        (f"d2-{i}".encode(), json.dumps({"id": f"d2-{i}", "x": [float(i % 11), 0.5]}).encode())
        for i in range(500)
    ]
    produce(kafka_bootstrap, topics.input, new)

    total = n + len(new)
    wait_for(lambda: worker.metric("gmm_input_committed_offset") == total, 120, message="commits")
    outs = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, total, 30)]
    dead = [
        json.loads(r.value) for r in consume(kafka_bootstrap, topics.dlq, total - len(outs), 30)
    ]
    assert len(outs) + len(dead) == total  # one output per input: nothing lost, nothing twice
    ids = {d["id"] for d in outs}
    assert len(ids) == len(outs)
    assert {d["reason"] for d in dead} <= {"wrong_dim"}
    assert all(f"d2-{i}" in ids for i in range(500))  # the new layout serves
    assert {d["model_version"] for d in outs if d["id"].startswith("d2-")} == {2}
    assert {d["model_version"] for d in outs if d["id"].startswith("d1-")} <= {1, 2}
    # Records kept flowing while the new layout compiled: the old model served records that
    # arrived after the publish, and no gap between consecutive outputs came near the compile
    # (a stream that waited for it would show a gap about as long; the floor of a second
    # leaves room for a loaded host's scheduling, not for a compile).
    old_out = sorted(d["ts_out"] for d in outs if d["id"].startswith("d1-"))
    assert any(d["model_version"] == 1 and d["ts_in"] > published[0] for d in outs)
    gaps = np.diff(old_out)
    record_property("max_gap_s", float(gaps.max()))
    record_property("compile_s", compile_s)
    record_property("wrong_dim", len(dead))
    limit = max(1.0, 0.5 * compile_s)
    assert gaps.max() < limit, f"the stream stalled {gaps.max():.2f} s of a {compile_s:.1f} s swap"


def test_temperature_one_replays_draw_the_same_assignments(kafka_bootstrap, start_worker):
    """A record's draw is a function of (GMM_SEED, topic, partition, offset): a replay (here a
    second consumer group over the same input) draws exactly the same assignments."""
    first = Topics("replay")
    publish_model(kafka_bootstrap, first.params, SEED_MODEL)
    n = 1_000
    produce(kafka_bootstrap, first.input, ties(n, "r"))
    draws = []
    for seed, batch in (("7", "64"), ("7", "1024"), ("8", "1024")):
        replay = Topics("replay")
        replay.input, replay.params = first.input, first.params
        worker = start_worker(replay, GMM_TEMPERATURE="1", GMM_SEED=seed, GMM_MAX_BATCH=batch)
        outs = [json.loads(r.value) for r in consume(kafka_bootstrap, replay.output, n, 90)]
        worker.stop()
        assert len(outs) == n
        draws.append({o["id"]: o["assignment"] for o in outs})
    assert draws[0] == draws[1]  # same seed, other batching: the same draws
    assert draws[0] != draws[2]  # another seed: other draws
    assert 0.4 < np.mean(list(draws[0].values())) < 0.6


def test_full_covariance_model_serves_and_swaps_type_without_restart(kafka_bootstrap, start_worker):
    """A D=3 full-covariance model (gmm-params/2) served on the real broker, then a tied-diag
    one of the same K and D: each record's probabilities are the float64 reference's."""
    topics = Topics("fullcov")
    tril = np.array(
        [
            [[1.0, 0.0, 0.0], [0.9, 0.5, 0.0], [0.2, 0.1, 0.8]],
            [[0.6, 0.0, 0.0], [-0.4, 0.7, 0.0], [0.0, 0.3, 1.2]],
        ]
    )
    full = ModelParams(
        1,
        MixtureParams(np.array([0.4, 0.6]), np.array([[0.0, 0.0, 0.0], [2.0, 1.0, -1.0]]), tril),
        FitMetadata(fitted_at="2026-01-01T00:00:00+00:00"),
        covariance="full",
    )
    publish_model(kafka_bootstrap, topics.params, full)
    worker = start_worker(topics)
    worker.wait_ready()
    rng = np.random.default_rng(9)
    xs = rng.normal(0.5, 1.5, (400, 3))
    records = [
        (f"f{i}".encode(), json.dumps({"id": f"f{i}", "x": x.tolist()}).encode())
        for i, x in enumerate(xs)
    ]
    produce(kafka_bootstrap, topics.input, records[:200])
    wait_for(lambda: worker.metric("gmm_input_committed_offset") == 200, 60, message="first half")
    diag = ModelParams(
        2,
        MixtureParams(full.mixture.weights, full.mixture.locs, np.array([1.0, 0.8, 1.1])),
        FitMetadata(fitted_at="2026-01-02T00:00:00+00:00"),
        covariance="tied-diag",
    )
    publish_model(kafka_bootstrap, topics.params, diag)
    wait_for(lambda: worker.metric("gmm_model_version") == 2, 120, message="v2 served")
    produce(kafka_bootstrap, topics.input, records[200:])

    outs = {
        d["id"]: d
        for d in (json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, 400, 60))
    }
    assert len(outs) == 400
    models = {1: full.mixture, 2: diag.mixture}
    for i, x in enumerate(xs):
        out = outs[f"f{i}"]
        assert out["model_version"] == (1 if i < 200 else 2)
        m = models[out["model_version"]]
        log_joint = np.log(m.weights) + component_log_pdf(x[None], m)[0]
        want = np.exp(log_joint - log_joint.max())
        want /= want.sum()
        np.testing.assert_allclose(out["probs"], want, atol=1e-5)
        if abs(want[0] - want[1]) > 1e-4:
            assert out["assignment"] == int(want.argmax())
