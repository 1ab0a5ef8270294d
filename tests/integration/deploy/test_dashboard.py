"""Every Grafana panel's query returns data from a real Prometheus scraping the real services.

Grafana cannot run here, so the dashboard's wiring is proved with real peers: the compose
stack's Prometheus configuration (targets pointed at local processes), a worker and a trainer
on the real broker, and traffic with some bad records in it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading

import numpy as np
import pytest

from support.harness import (
    Topics,
    TrainerProcess,
    free_port,
    produce,
    trainer_env,
    wait_for,
)
from tests.integration.deploy.prometheus import (
    Prometheus,
    dashboard_queries,
    local_config,
    require,
)


@pytest.fixture(autouse=True)
def _tools():
    require(prometheus=shutil.which("prometheus"))


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory):
    """Worker + trainer + traffic + Prometheus; yields the running Prometheus."""
    from support.harness import Worker

    tmp = tmp_path_factory.mktemp("dashboard")
    topics = Topics("dash")
    worker = Worker(kafka_bootstrap, topics, tmp, GMM_MAX_DELAY_MS="10").start()
    trainer_port = free_port()
    env = trainer_env(
        kafka_bootstrap,
        topics,
        tmp / "reports",
        GMM_TRAINER_METRICS_PORT=str(trainer_port),
        GMM_TRAIN_INTERVAL_SECONDS="4",
        # Every refit after the first is a candidate in shadow (the shadow panels have data),
        # never scored long enough and so rejected after 3 s (the rejection panel has data).
        GMM_PROMOTION="shadow",
        GMM_SHADOW_RECORDS="1000000000",
        GMM_SHADOW_TIMEOUT_SECONDS="3",
    )
    trainer = TrainerProcess(env, tmp / "trainer.log")
    stop = threading.Event()

    def traffic() -> None:
        rng = np.random.default_rng(0)
        n = 0
        while not stop.is_set():
            xs = np.where(rng.random(200) < 0.4, rng.normal(0, 1, 200), rng.normal(10, 1, 200))
            batch = [
                (None, json.dumps({"id": f"d-{n + i}", "x": float(x)}).encode())
                for i, x in enumerate(xs)
            ]
            batch += [(None, b"not json"), (None, b'{"x": "seven"}')]
            produce(kafka_bootstrap, topics.input, batch)
            n += 200
            stop.wait(0.5)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    prometheus = Prometheus(
        local_config(
            {
                "gmm-worker": [f"127.0.0.1:{worker.port}"],
                "gmm-trainer": [f"127.0.0.1:{trainer_port}"],
            }
        ),
        tmp,
    )
    try:
        wait_for(prometheus.ready, 60, message="prometheus ready")
        worker.wait_ready(180)
        wait_for(prometheus.targets_up, 60, message="both targets up")
        yield prometheus
    finally:
        stop.set()
        feeder.join(10)
        prometheus.stop()
        trainer.stop()
        worker.stop()


def test_every_dashboard_query_returns_data(stack):
    queries = dashboard_queries()
    assert len(queries) >= 17
    missing = stack.without_data([expr for _, expr in queries], timeout=120)
    titles = [title for title, expr in queries if expr in missing]
    assert not missing, f"panels without data: {titles}: {missing}"


def test_a_wrong_query_fails_the_check(stack):
    exprs = [expr for _, expr in dashboard_queries()][:2]
    wrong = "sum(rate(gmm_no_such_metric_total[1m]))"
    assert stack.without_data([*exprs, wrong], timeout=5) == [wrong]


def test_promtool_accepts_the_compose_configuration():
    from tests.integration.deploy.prometheus import COMPOSE_CONFIG

    result = subprocess.run(
        ["promtool", "check", "config", str(COMPOSE_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
