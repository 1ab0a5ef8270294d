"""Glitches against the real broker: a stream with 1 % glitches is refitted and served without a
visible change (the glitches left out of the fit, still classified), and single glitch records
neither fake a drift alarm nor hide a real one."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from kafka_common.topics import TopicSpec, ensure_topics
from mixture.evaluate import component_log_pdf
from mixture.labels import component_sds
from mixture.params import MixtureParams
from support.harness import Topics, consume, produce, wait_for
from tests.integration.trainer.test_shadow_and_drift import model, setup
from tests.integration.trainer.test_trainer import bimodal, cycle, settings

GLITCHES = (1e9, -1e15, 1e15, 3e6, -7e12)


def glitch_records(n: int, prefix: str) -> list[tuple[bytes | None, bytes]]:
    """n valid points far outside the data (within the point rules' +-1e15)."""
    return [
        (None, json.dumps({"id": f"{prefix}-{i}", "x": GLITCHES[i % len(GLITCHES)]}).encode())
        for i in range(n)
    ]


def _assign(params: MixtureParams, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.log(params.weights) + component_log_pdf(x, params), axis=1)


def test_a_refit_of_a_glitchy_stream_serves_without_a_visible_change(
    kafka_bootstrap, start_worker, tmp_path
):
    topics = Topics("glitchy")
    s = settings(kafka_bootstrap, topics, tmp_path, GMM_TRAIN_WINDOW_RECORDS="3030")
    asyncio.run(ensure_topics(s.kafka, [TopicSpec(topics.input, 2)]))
    window = bimodal(3000, seed=1, prefix="a")
    produce(kafka_bootstrap, topics.input, window)
    clean, _ = cycle(s)  # v1: the clean window
    assert clean.published is not None
    assert clean.excluded is not None and clean.excluded["beyond_fence"] == 0
    v1 = clean.published.mixture
    worker = start_worker(topics)
    assert worker.wait_ready()["model_version"] == 1

    # 30 glitches arrive: the next window is the same 3,000 points and the glitches (1 %).
    mixed = glitch_records(30, "g")
    produce(kafka_bootstrap, topics.input, mixed)
    outcome, metrics = cycle(s)
    assert outcome.published is not None and outcome.published.version == 2, outcome.detail
    assert outcome.window == 3030 and outcome.excluded is not None
    assert outcome.excluded == {"beyond_fence": 30, "implausible": clean.excluded["implausible"]}
    excluded = metrics.excluded_points.labels(reason="beyond_fence")._value.get()
    assert excluded == 30
    summary = json.loads((outcome.report / "summary.json").read_text())
    assert summary["excluded_points"]["beyond_fence"] == 30
    assert summary["fitted_points"] == 3000 - clean.excluded["implausible"]
    assert outcome.published.metadata.extra["excluded_points"]["beyond_fence"] == 30

    # No visible change: the same locations within 0.1 sd, the same components for the points.
    v2 = outcome.published.mixture
    error = np.abs(np.asarray(v2.locs) - v1.locs) / component_sds(v1)
    assert error.max() < 0.1, error
    points = np.array([[json.loads(v)["x"]] for _, v in window])
    assert np.mean(_assign(v2, points) == _assign(v1, points)) >= 0.99

    # The worker serves v2 and still classifies every valid record, glitches included.
    assert worker.wait_ready()["model_version"] == 2
    later = glitch_records(5, "h")
    produce(kafka_bootstrap, topics.input, later)
    total = 3000 + len(mixed) + len(later)
    wait_for(
        lambda: worker.metric("gmm_assignments_out_total") >= total, 60, message="every output"
    )
    outputs = [json.loads(r.value) for r in consume(kafka_bootstrap, topics.output, total)]
    served = {o["id"]: o for o in outputs}
    assert all(f"g-{i}" in served for i in range(30)) and all(f"h-{i}" in served for i in range(5))
    assert {served[f"h-{i}"]["model_version"] for i in range(5)} == {2}
    assert not consume(kafka_bootstrap, topics.dlq, 1, timeout=2)


@pytest.mark.slow
def test_single_glitches_neither_fake_nor_hide_a_drift_alarm(kafka_bootstrap, start_worker):
    topics, events, publisher = setup(kafka_bootstrap, "glitchdrift")
    asyncio.run(publisher.publish(model((2.0, 9.0)), "cli"))
    worker = start_worker(
        topics, GMM_EVENTS_TOPIC=events, GMM_DRIFT_WARMUP_BLOCKS="16", GMM_DRIFT_BLOCK_RECORDS="128"
    )
    assert worker.wait_ready()["model_version"] == 1
    sent = 0

    def send(items: list[tuple[bytes | None, bytes]]) -> None:
        nonlocal sent
        produce(kafka_bootstrap, topics.input, items)
        sent += len(items)
        wait_for(lambda: worker.metric("gmm_assignments_out_total") >= sent, 60, message="out")

    # Warm-up (16 blocks of 128 records) with one glitch in it: log p about -5e29.
    send(bimodal(1000, seed=1, prefix="w") + glitch_records(1, "gw") + bimodal(1100, seed=2))
    # Stationary after the warm-up, a single glitch now and then: no alarm.
    for i in range(4):
        send(bimodal(1000, seed=10 + i, prefix=f"s{i}") + glitch_records(1, f"gs{i}"))
    assert worker.metric("gmm_drift_alarms_total") == 0
    # A real drift (both locations move by 2 sd): the alarm comes, not hidden by the warm-up's
    # glitch.
    for i in range(4):
        send(bimodal(500, locs=(4.0, 11.0), seed=20 + i, prefix=f"d{i}"))
    assert worker.metric("gmm_drift_alarms_total") >= 1
