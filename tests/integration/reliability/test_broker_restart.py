"""The broker restarts mid-stream: the worker and the trainer reconnect; nothing is lost."""

from __future__ import annotations

import asyncio

import pytest

from kafka_common.params_topic import read_newest
from kafka_common.settings import KafkaSettings
from support.harness import (
    SEED_MODEL,
    Broker,
    Topics,
    TrainerProcess,
    Worker,
    produce,
    publish_model,
    trainer_env,
    wait_for,
)
from tests.integration.reliability.test_faults import points, wait_covered

pytestmark = pytest.mark.slow


def newest_version(bootstrap: str, topic: str) -> int:
    try:
        model = asyncio.run(
            asyncio.wait_for(
                read_newest(KafkaSettings(bootstrap_servers=bootstrap), topic, "gmm"), 15
            )
        )
    except Exception:  # the broker is down or not ready yet
        return -1
    return model.version if model else 0


@pytest.mark.timeout(900)  # its own waits, each with a message, add up past 300 s
def test_broker_restart_midstream(tmp_path, record_property):
    broker = Broker(tmp_path / "broker").up()
    topics = Topics("restart")
    worker = trainer = None
    try:
        publish_model(broker.bootstrap, topics.params, SEED_MODEL)
        worker = Worker(broker.bootstrap, topics, tmp_path).start()
        worker.wait_ready()
        env = trainer_env(
            broker.bootstrap,
            topics,
            tmp_path / "reports",
            GMM_TRAIN_INTERVAL_SECONDS="3",
            GMM_TRAINER_METRICS_PORT="0",
        )
        trainer = TrainerProcess(env, tmp_path / "trainer.log")
        n = 30_000
        produce(broker.bootstrap, topics.input, points(n, "r"))
        wait_for(
            lambda: worker.metric("gmm_assignments_out_total") >= 5_000,
            120,
            message="5k outputs before the restart",
        )
        wait_for(
            lambda: newest_version(broker.bootstrap, topics.params) >= 2,
            120,
            message="the trainer publishing before the restart",
        )

        broker.down()
        broker.up()
        version_after_restart = newest_version(broker.bootstrap, topics.params)

        ids = wait_covered(
            broker.bootstrap, topics.output, {f"r-{i}" for i in range(n)}, timeout=300
        )
        record_property("duplicates", len(ids) - len(set(ids)))
        assert worker.alive(), worker.log_tail()
        # The trainer reconnected: it publishes again after the restart.
        wait_for(
            lambda: newest_version(broker.bootstrap, topics.params) > version_after_restart,
            120,
            message="a version published after the restart",
        )
        assert trainer.alive()
        print(f"\nbroker restart: 0 of {n} lost, {len(ids) - len(set(ids))} duplicated")
    finally:
        if trainer is not None:
            trainer.stop()
        if worker is not None:
            worker.stop()
        broker.down()
