"""Forged events on the real broker decide nothing: a trainer with GMM_EVENTS_VERIFY_KEY follows
the events topic as `gmm-trainer run` does (`trainer.main.watch_events`); shadow reports and
drift alarms that are unsigned or signed by a key it does not list are refused and counted, a
genuine worker's signed report is counted and its signed alarm asks for a refit, that alarm's
record sent again later starts no second refit, and the genuine worker's old signed reports
about an earlier candidate of the same version (or from before reports carried the candidate's
digest) count for nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from kafka_common.event_signing import HEADER, EventSigner
from kafka_common.events import EventProducer
from kafka_common.settings import KafkaSettings
from kafka_common.signing import keygen
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import Topics, consume
from trainer.cycle import Trainer
from trainer.events import ShadowTally
from trainer.main import DriftRequests, refused_events, watch_events
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from wire.event import Event
from wire.shadow_report import ShadowReport, ShadowTotals, model_digest


def model(version: int, fitted_at: str | None = None) -> ModelParams:
    fitted_at = fitted_at or time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return ModelParams(
        version,
        MixtureParams([0.3, 0.7], [[2.0], [9.0]], [1.0]),
        FitMetadata(fitted_at=fitted_at),
    )


async def until(
    condition: Callable[[], Any], timeout: float, message: str, fail: bool = True
) -> bool:
    """Polls condition() on the event loop until it holds (True); after timeout fails the test,
    or with fail=False returns False."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            assert not fail, f"timed out waiting for {message}"
            return False
        await asyncio.sleep(0.05)
    return True


def shadow(worker: str, records: int, clipped: float, digest: str | None = None) -> Event:
    """A report on candidate 2 (of digest `digest`) against served version 1."""
    totals = ShadowTotals(records, 0.0, 0.0, records, clipped)
    return ShadowReport(2, 1, worker, totals, digest).to_event("gmm")


async def test_forged_shadow_and_drift_events_decide_nothing(kafka_bootstrap, tmp_path):
    worker_key = keygen(tmp_path / "worker")
    stranger_key = keygen(tmp_path / "stranger")
    topics = Topics("events-auth")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    await ensure_topics(kafka, [TopicSpec(topics.events, 1)])
    settings = TrainerSettings(
        kafka=kafka,
        params_topic=topics.params,
        history_topic=topics.history,
        events_topic=topics.events,
        model_name="gmm",
        promotion="shadow",
        shadow_records=1000,
        events_verify_key=str(worker_key[1]),
    )
    metrics = TrainerMetrics()
    trainer = Trainer(settings, metrics)
    trainer.current, trainer.candidate = model(1), model(2)  # v2 in shadow against v1
    tally, drift = ShadowTally(refused_events(metrics)), DriftRequests()

    def alarms() -> float:
        return metrics.registry.get_sample_value("gmm_trainer_drift_alarms_total") or 0.0

    def refused(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "gmm_trainer_events_refused_total", {"reason": reason}
        )
        return value or 0.0

    unsigned = EventProducer(kafka, topics.events)  # a worker's ACLs, no key
    stranger = EventProducer(kafka, topics.events, EventSigner.from_file(stranger_key[0]))
    genuine = EventProducer(kafka, topics.events, EventSigner.from_file(worker_key[0]))
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await raw.start()
    watcher = asyncio.create_task(watch_events(settings, trainer, tally, drift))
    try:
        # The watcher reads from the topic's end: probe until it counts what it reads.
        for _ in range(60):
            await raw.send_and_wait(topics.events, b"probe", key=b"gmm")
            if await until(lambda: refused("invalid"), 1, "a probe", fail=False):
                break
        assert refused("invalid"), "the watcher never read the events topic"

        # Forged: a report that would reject the candidate at once (100,000 records, 10 nats
        # worse each), and a drift alarm on the served version; unsigned, then signed by a
        # key the trainer does not list.
        forged_report = shadow("host-1", 100_000, -1_000_000.0)
        forged_alarm = Event.now("drift", "gmm", 1, 500.0, detail="forged")
        for producer in (unsigned, stranger):
            await producer.send(forged_report)
            await producer.send(forged_alarm)
        # The genuine worker's old reports, enough to promote: about an earlier candidate 2
        # (version numbering restarted since), and from before reports carried a digest.
        earlier = model_digest(model(2, "2025-01-15T09:00:00+00:00"))
        await genuine.send(shadow("host-1", 5000, 5000.0, earlier))
        await genuine.send(shadow("host-1", 5000, 5000.0))
        # The genuine worker's report (under GMM_SHADOW_RECORDS: no verdict yet), after them.
        digest = model_digest(ModelParams.loads(trainer.candidate.dumps()))  # as a worker reads it
        await genuine.send(shadow("host-1", 300, 15.0, digest))
        await until(lambda: tally.totals(2, 1).records == 300, 30, "the signed report counted")
        assert refused("unsigned") == 2 and refused("bad_signature") == 2
        assert refused("other_candidate") == 1 and refused("no_digest") == 1
        assert tally.totals(2, 1).clipped_difference_sum == 15.0
        assert drift.version is None and not drift.pending_for(trainer)
        assert alarms() == 0
        assert await trainer.judge_candidate(tally) is None  # neither promoted nor rejected
        assert trainer.candidate is not None and trainer.candidate.version == 2

        # The genuine worker's alarm asks for a refit.
        await genuine.send(Event.now("drift", "gmm", 1, 60.0, detail="moved"))
        await until(lambda: drift.pending_for(trainer), 30, "the signed alarm taken")
        assert alarms() == 1
        drift.answer()  # the refit's cycle starts

        # The alarm's very record (value and signature), sent again: answered already.
        records = await asyncio.to_thread(consume, kafka_bootstrap, topics.events, 10_000, 10)
        (original,) = [
            r
            for r in records
            if r.value.startswith(b'{"kind":"drift"')
            and b"moved" in r.value
            and any(k == HEADER for k, _ in r.headers)
        ]
        await raw.send_and_wait(
            topics.events, original.value, key=original.key, headers=list(original.headers)
        )
        await until(lambda: refused("duplicate") == 1, 30, "the replayed alarm refused")
        assert not drift.pending_for(trainer)
        assert alarms() == 1
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        for producer in (unsigned, stranger, genuine):
            await producer.stop()
        await raw.stop()
