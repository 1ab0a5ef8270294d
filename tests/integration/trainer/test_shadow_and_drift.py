"""Candidates in shadow and drift alarms against the real broker: a candidate promoted, one
rejected, a drift alarm that brings a refit, and no alarm on a stationary stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

import pytest

from kafka_common.params_topic import Publisher, history_spec, params_spec, read_state
from kafka_common.settings import KafkaSettings
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.params import FitMetadata, MixtureParams, ModelParams
from support.harness import (
    Topics,
    TrainerProcess,
    consume,
    produce,
    trainer_env,
    wait_for,
)
from tests.integration.trainer.test_trainer import bimodal
from trainer.settings import TrainerSettings
from wire.event import Event

pytestmark = pytest.mark.slow


def model(locs=(2.0, 9.0)) -> ModelParams:
    return ModelParams(
        0,
        MixtureParams([0.3, 0.7], [[locs[0]], [locs[1]]], [1.0]),
        FitMetadata(fitted_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())),
    )


def setup(bootstrap: str, stem: str, name: str = "gmm") -> tuple[Topics, str, Publisher]:
    topics = Topics(stem)
    events = f"{topics.params}.events"
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    specs = [
        TopicSpec(topics.input, 2),
        params_spec(topics.params),
        history_spec(topics.history),
        TopicSpec(events, 1),
    ]
    asyncio.run(ensure_topics(kafka, specs))
    settings = TrainerSettings(
        kafka=kafka, params_topic=topics.params, history_topic=topics.history, model_name=name
    )
    return topics, events, Publisher.from_settings(settings)


class Feeder:
    """Produces `batch` records of a two-cluster stream every `pause` seconds until stopped."""

    def __init__(self, bootstrap: str, topic: str, locs=(2.0, 9.0), batch=500, pause=0.5):
        self.stop_flag = threading.Event()
        self.sent = 0

        def run() -> None:
            seed = 0
            while not self.stop_flag.is_set():
                produce(bootstrap, topic, bimodal(batch, locs=locs, seed=seed, prefix=f"f{seed}"))
                self.sent += batch
                seed += 1
                self.stop_flag.wait(pause)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)


def events_of(bootstrap: str, topic: str, n: int, timeout: float = 5) -> list[Event]:
    return [Event.loads(r.value) for r in consume(bootstrap, topic, n, timeout=timeout)]


def wait_for_event(bootstrap: str, topic: str, kind: str, timeout: float = 60) -> None:
    """Waits until an event of `kind` is on the topic. The trainer sends its decision's event
    after the decision reached the params topic (and so the worker): a test that saw the worker
    act on the decision must not stop the trainer before the event is out."""

    def sent() -> bool:
        return any(e.kind == kind for e in events_of(bootstrap, topic, 1000, timeout=1))

    wait_for(sent, timeout, message=f"a {kind!r} event")


def trust_chain(tmp_path) -> tuple[dict[str, str], dict[str, str]]:
    """The worker's and the trainer's variables for a signed trust chain: the trainer signs
    models and the worker verifies them; the worker signs events and the trainer verifies."""
    from kafka_common.signing import keygen

    models_private, models_public, _ = keygen(tmp_path / "models")
    events_private, events_public, _ = keygen(tmp_path / "events")
    worker = {
        "GMM_PARAMS_VERIFY_KEY": str(models_public),
        "GMM_EVENTS_SIGNING_KEY": str(events_private),
    }
    trainer = {
        "GMM_PARAMS_SIGNING_KEY": str(models_private),
        "GMM_EVENTS_VERIFY_KEY": str(events_public),
    }
    return worker, trainer


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_better_candidate_is_promoted(kafka_bootstrap, start_worker, tmp_path, signed):
    """Also with every signature on (models signed by the trainer, events by the worker): the
    workers' signed reports, bound to the candidate's digest, promote it."""
    # A name of its own when signed: a publisher's transactional id is per name.
    name = "signed" if signed else "gmm"
    topics, events, publisher = setup(kafka_bootstrap, "promote", name)
    worker_keys, trainer_keys = trust_chain(tmp_path) if signed else ({}, {})
    if signed:
        from kafka_common.signing import Signer

        signer = Signer.from_file(trainer_keys["GMM_PARAMS_SIGNING_KEY"])
        publisher = dataclasses.replace(publisher, signer=signer)
    asyncio.run(publisher.publish(model((3.0, 8.0)), "cli"))  # v1: off by a unit each
    worker = start_worker(
        topics,
        GMM_EVENTS_TOPIC=events,
        GMM_SHADOW_REPORT_SECONDS="0.5",
        GMM_MODEL_NAME=name,
        **worker_keys,
    )
    assert worker.wait_ready()["model_version"] == 1
    feeder = Feeder(kafka_bootstrap, topics.input)
    env = trainer_env(
        kafka_bootstrap,
        topics,
        tmp_path / "r",
        **trainer_keys,
        GMM_MODEL_NAME=name,
        GMM_EVENTS_TOPIC=events,
        GMM_PROMOTION="shadow",
        GMM_SHADOW_RECORDS="2000",
        GMM_TRAIN_MIN_POINTS="1000",
        GMM_TRAIN_INTERVAL_SECONDS="600",
        GMM_FIRST_MODEL_RETRY_SECONDS="1",
        GMM_TRAINER_METRICS_PORT="0",
    )
    wait_for(lambda: feeder.sent >= 2000, 60, message="a window of data")
    trainer = TrainerProcess(env, tmp_path / "trainer.log")
    try:
        # The refit (v2) is a candidate: scored beside v1, then promoted as v3.
        wait_for(lambda: worker.metric("gmm_candidate_version") == 2, 120, message="candidate")
        assert worker.metric("gmm_model_version") == 1
        wait_for(lambda: worker.metric("gmm_model_version") == 3, 120, message="promoted")
        wait_for_event(kafka_bootstrap, events, "promoted")
    finally:
        trainer.stop()
        feeder.stop()
    # The worker's last shadow report on candidate 2 (its series are dropped once withdrawn).
    everything = events_of(kafka_bootstrap, events, 1000)
    reports = [e for e in everything if e.kind == "shadow" and e.version == 2]
    last = reports[-1].data
    assert last["records"] >= 2000 and last["served_version"] == 1
    assert len(str(last["candidate_digest"])) == 16  # bound to the candidate it scored
    assert worker.metric("gmm_params_rejected_total") == 0
    assert last["agreements"] > 0.8 * last["records"]
    assert worker.metric("gmm_shadow_records_total", candidate_version="2") == 0
    served, candidate, _ = asyncio.run(
        read_state(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics.params, name)
    )
    assert candidate is None and served is not None
    assert served.metadata.extra["promoted_from"] == 2
    promoted = [e for e in everything if e.kind == "promoted"]
    assert [e.version for e in promoted] == [3]
    assert promoted[0].statistic > 0  # the candidate fit the stream better than v1
    # No assignment ever came from the candidate.
    outs = consume(kafka_bootstrap, topics.output, 10**6, timeout=5)
    assert {json.loads(r.value)["model_version"] for r in outs} <= {1, 3}


def test_a_worse_candidate_is_rejected(kafka_bootstrap, start_worker, tmp_path):
    topics, events, publisher = setup(kafka_bootstrap, "reject")
    asyncio.run(publisher.publish(model((2.0, 9.0)), "cli"))  # v1 fits the stream
    asyncio.run(publisher.publish(model((2.0, 14.0)), "cli", stage="candidate"))  # v2 does not
    worker = start_worker(topics, GMM_EVENTS_TOPIC=events, GMM_SHADOW_REPORT_SECONDS="0.5")
    assert worker.wait_ready()["model_version"] == 1
    wait_for(lambda: worker.metric("gmm_candidate_version") == 2, 60, message="candidate scored")
    env = trainer_env(
        kafka_bootstrap,
        topics,
        tmp_path / "r",
        GMM_EVENTS_TOPIC=events,
        GMM_PROMOTION="shadow",
        GMM_SHADOW_RECORDS="2000",
        GMM_TRAIN_INTERVAL_SECONDS="600",
        GMM_TRAINER_METRICS_PORT="0",
    )
    trainer = TrainerProcess(env, tmp_path / "trainer.log")
    feeder = Feeder(kafka_bootstrap, topics.input)
    try:
        wait_for(
            lambda: worker.metric("gmm_candidate_version") != 2, 120, message="candidate withdrawn"
        )
        wait_for_event(kafka_bootstrap, events, "rejected")
    finally:
        trainer.stop()
        feeder.stop()
    assert worker.metric("gmm_model_version") == 1
    served, candidate, highest = asyncio.run(
        read_state(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics.params, "gmm")
    )
    assert served is not None and served.version == 1 and candidate is None and highest == 2
    rejected = [e for e in events_of(kafka_bootstrap, events, 1000) if e.kind == "rejected"]
    assert [e.version for e in rejected] == [2]
    assert rejected[0].statistic < -0.05 and "in shadow" in (rejected[0].detail or "")


def _stream(bootstrap, start_worker, tmp_path, stem: str, shift: float) -> dict:
    """12,000 records, the second half moved by `shift` (about 2,000 records/s), through a
    worker and a trainer that waits 600 s between refits unless a drift alarm comes."""
    topics, events, publisher = setup(bootstrap, stem)
    asyncio.run(publisher.publish(model((2.0, 9.0)), "cli"))
    worker = start_worker(
        topics,
        GMM_EVENTS_TOPIC=events,
        GMM_DRIFT_WARMUP_BLOCKS="16",
        GMM_DRIFT_BLOCK_RECORDS="128",
    )
    assert worker.wait_ready()["model_version"] == 1
    env = trainer_env(
        bootstrap,
        topics,
        tmp_path / "r",
        GMM_EVENTS_TOPIC=events,
        GMM_TRAIN_INTERVAL_SECONDS="600",
        GMM_MIN_REFIT_SECONDS="0",
        GMM_TRAINER_METRICS_PORT="0",
    )
    trainer = TrainerProcess(env, tmp_path / "trainer.log")
    log = tmp_path / "trainer.log"
    run = {"worker": worker, "events": events, "trainer": trainer, "alarm_seconds": None}
    try:
        # Its first cycle finds no data: the next one is 600 s away unless an alarm comes.
        wait_for(lambda: "too_few_points" in log.read_text(), 120, message="first cycle")
        produce(bootstrap, topics.input, bimodal(6000, seed=1, prefix="a"))
        wait_for(
            lambda: worker.metric("gmm_assignments_out_total") >= 6000, 60, message="first half"
        )
        assert worker.metric("gmm_drift_alarms_total") == 0
        started = time.monotonic()
        for i in range(12):  # 500 records every 0.25 s: about 2,000 records/s
            locs = (2.0 + shift, 9.0 + shift)
            produce(bootstrap, topics.input, bimodal(500, locs=locs, seed=10 + i, prefix=f"b{i}"))
            time.sleep(0.25)
            if worker.metric("gmm_drift_alarms_total") and run["alarm_seconds"] is None:
                run["alarm_seconds"] = round(time.monotonic() - started, 2)
        wait_for(lambda: worker.metric("gmm_assignments_out_total") >= 12000, 60, message="all out")
        run["started"] = started
        return run
    except BaseException:
        trainer.stop()
        raise


def test_drift_alarm_brings_a_refit(kafka_bootstrap, start_worker, tmp_path, record_property):
    run = _stream(kafka_bootstrap, start_worker, tmp_path, "drift", 2.0)
    worker, events, trainer = run["worker"], run["events"], run["trainer"]
    try:
        assert worker.metric("gmm_drift_alarms_total") >= 1
        drift = [e for e in events_of(kafka_bootstrap, events, 1000) if e.kind == "drift"]
        assert drift and drift[0].version == 1
        delay_records = int(drift[0].data["records"]) - 6000
        delay_seconds = run["alarm_seconds"]
        record_property("drift_alarm_delay_records", delay_records)
        record_property("drift_alarm_delay_seconds", delay_seconds)
        print(f"drift alarm after {delay_records} moved records ({delay_seconds} s)")
        assert 0 < delay_records <= 2000
        # The trainer refits at once (not after its 600 s interval) and the worker serves it.
        wait_for(lambda: worker.metric("gmm_model_version") >= 2, 120, message="refit served")
        print(f"refit served {time.monotonic() - run['started']:.1f} s after the shift began")
    finally:
        trainer.stop()


def test_no_alarm_on_a_stationary_stream(kafka_bootstrap, start_worker, tmp_path, record_property):
    run = _stream(kafka_bootstrap, start_worker, tmp_path, "stationary", 0.0)
    worker, events, trainer = run["worker"], run["events"], run["trainer"]
    try:
        assert worker.metric("gmm_drift_alarms_total") == 0
        assert not [e for e in events_of(kafka_bootstrap, events, 1000) if e.kind == "drift"]
        assert worker.metric("gmm_model_version") == 1  # no refit was asked for
        record_property("false_alarms", 0)
    finally:
        trainer.stop()
