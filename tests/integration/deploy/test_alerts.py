"""Alerts fire and resolve for real: a worker on a broker of its own, the rules in
deploy/prometheus/rules/ in a real Prometheus scraping it, a real Alertmanager with the compose
stack's routes, and a webhook receiver in place of the one a user configures.

The rules run on a compressed clock (every `for:` and range window 1/20 of its length, thresholds
unchanged: `compressed_rules`); their real durations and thresholds are tested with promtool
(tests/unit/deploy/test_alert_rules.py). Three faults are provoked: a params record that fails
validation, a frozen broker (SIGSTOP) that leaves outputs unacknowledged, a stopped worker.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from support.harness import SEED_MODEL, Broker, Topics, Worker, produce, publish_model, wait_for
from tests.integration.deploy import alertmanager as am
from tests.integration.deploy.prometheus import (
    Prometheus,
    compressed_rules,
    local_config,
    require,
)


@pytest.fixture(autouse=True)
def _tools():
    require(prometheus=shutil.which("prometheus"), **{"prometheus-alertmanager": am.binary()})


#: Rules' durations on the test's clock.
CLOCK = 1 / 20


def records(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "x": float(i % 12)}).encode())
        for i in range(n)
    ]


@pytest.fixture
def stack(tmp_path):
    broker = Broker(tmp_path / "broker").up()
    topics = Topics("alerts")
    receiver = am.WebhookReceiver()
    alertmanager = am.Alertmanager(am.local_config(receiver.url), tmp_path)
    worker = prometheus = None
    try:
        publish_model(broker.bootstrap, topics.params, SEED_MODEL)
        # A batch waits up to 8 s to fill, so records produced are fetched well before their
        # batch is sent: to a broker that may no longer answer by then.
        worker = Worker(
            broker.bootstrap, topics, tmp_path, GMM_MAX_BATCH="4096", GMM_MAX_DELAY_MS="8000"
        ).start()
        prometheus = Prometheus(
            local_config(
                {"gmm-worker": [f"127.0.0.1:{worker.port}"], "gmm-trainer": []},
                rules_dir=compressed_rules(tmp_path, CLOCK),
                alertmanager=alertmanager.address,
            ),
            tmp_path,
        )
        wait_for(alertmanager.ready, 60, message="alertmanager ready")
        wait_for(prometheus.ready, 60, message="prometheus ready")
        worker.wait_ready(180)
        wait_for(lambda: worker.metric("gmm_assigned_partitions") == 2, 60, message="assigned")
        wait_for(prometheus.targets_up, 60, message="the worker scraped")
        yield broker, topics, worker, receiver, alertmanager
    finally:
        for part in (prometheus, worker, alertmanager, receiver):
            if part is not None:
                part.stop()
        broker.down()


def fired(receiver, name: str, timeout: float = 120) -> dict:
    """The first firing notification of alert `name`."""
    return wait_for(lambda: receiver.alerts(name, "firing"), timeout, message=f"{name} firing")[0]


def resolved(receiver, name: str, timeout: float = 120) -> dict:
    return wait_for(lambda: receiver.alerts(name, "resolved"), timeout, message=f"{name} resolved")[
        0
    ]


def test_three_faults_each_fire_an_alert_that_reaches_alertmanager_and_resolves(stack):
    broker, topics, worker, receiver, alertmanager = stack
    assert not receiver.alerts("GmmParamsRejected", "firing")  # a healthy worker: nothing

    # 1. A params record that fails validation, on the model's own key.
    produce(broker.bootstrap, topics.params, [(b"gmm", b'{"schema": "gmm-params/2"}')])
    alert = fired(receiver, "GmmParamsRejected")
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["model"] == "gmm"
    assert alert["labels"]["reason"] == "invalid"
    assert alert["labels"]["instance"] == f"127.0.0.1:{worker.port}"
    assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#gmmparamsrejected"
    assert alertmanager.active("GmmParamsRejected")
    assert not receiver.alerts("GmmParamsUntrusted", "firing")  # invalid, not forged
    # It resolves once the window without a new refusal has passed (45 s on this clock).
    resolved(receiver, "GmmParamsRejected")

    # 2. A frozen broker: fetched records wait to be delivered.
    produce(broker.bootstrap, topics.input, records(500, "a"))
    # Positions the fault as test_delivery_faults does (nothing observable marks a fetched,
    # not yet closed batch): fetched within milliseconds (2 s allowed), sent 8 s after the
    # first record.
    time.sleep(2.0)
    broker.pause()
    try:
        alert = fired(receiver, "GmmDeliveryStuck")
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["instance"] == f"127.0.0.1:{worker.port}"
    finally:
        broker.resume()
    resolved(receiver, "GmmDeliveryStuck")
    # After a freeze the group may have rebalanced: the gauge is then set again from the
    # broker's committed offsets (Source.update_lag).
    wait_for(
        lambda: worker.metric("gmm_input_committed_offset") == 500, 90, message="all committed"
    )

    # 3. The only worker stopped, then started again: one page (GmmNoWorkerUp); its
    # GmmWorkerDown reaches Alertmanager too, held back by the inhibition rule.
    worker.stop()
    alert = fired(receiver, "GmmNoWorkerUp")
    assert alert["labels"]["severity"] == "critical"
    # Suppressed once Alertmanager's inhibitor holds GmmNoWorkerUp as firing, which on a loaded
    # machine may lag the first look; never notified meanwhile (the receiver check below).
    down = wait_for(
        lambda: [
            a for a in alertmanager.active("GmmWorkerDown") if a["status"]["state"] == "suppressed"
        ],
        60,
        message="GmmWorkerDown in alertmanager, suppressed",
    )
    assert down[0]["labels"]["instance"] == f"127.0.0.1:{worker.port}"
    assert not receiver.alerts("GmmWorkerDown", "firing")
    worker.start()
    resolved(receiver, "GmmNoWorkerUp", timeout=240)
    wait_for(lambda: not alertmanager.active("GmmWorkerDown"), 60, message="GmmWorkerDown resolved")
    # The restarted worker reads the invalid record again: counted as caught up, not as new,
    # so it does not page again.
    wait_for(
        lambda: worker.metric("gmm_params_rejected_total", phase="catch_up") == 1,
        60,
        message="the old refusal counted as caught up",
    )
    assert worker.metric("gmm_params_rejected_total", phase="live") == 0
    assert len(receiver.alerts("GmmParamsRejected", "firing")) == 1
