"""A broker with a SASL_PLAINTEXT (PLAIN) listener: credentials from the environment work, and a
wrong password is one clear line from each process, not a hang or a flood of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.harness import Broker, Topics, Worker, wait_for

pytestmark = pytest.mark.slow

JAAS = "org.apache.kafka.common.security.plain.PlainLoginModule required"
BROKER_PROPS = f"""
listeners=SASL_PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{cport}}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{{port}}
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={JAAS} {{users}};
""".replace(
    "{users}",
    'username="admin" password="admin-secret" user_admin="admin-secret" user_svc="svc-secret"',
)
CLIENT_PROPS = f"""security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config={JAAS} username="admin" password="admin-secret";
"""


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("sasl") / "broker", BROKER_PROPS, CLIENT_PROPS).up()
    yield broker
    broker.down()


def env_for(broker: Broker, topics: Topics, password: str, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": password,
        "GMM_INPUT_TOPIC": topics.input,
        "GMM_PARAMS_TOPIC": topics.params,
        "GMM_HISTORY_TOPIC": topics.history,
        "GMM_OUTPUT_TOPIC": topics.output,
        "GMM_DLQ_TOPIC": topics.dlq,
        "GMM_REPORTS_DIR": str(tmp_path / "reports"),
        "GMM_TRAIN_RESTARTS": "10",
    }


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_right_credentials_from_the_environment(sasl_broker, tmp_path):
    topics = Topics("sasl")
    env = env_for(sasl_broker, topics, "svc-secret", tmp_path)
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps({"x": x}) + "\n" for x in [0, 1, 10, 11, 12, 0.5, 10.5]))
    fit = run(
        [
            "trainer.cli",
            "fit",
            "--data",
            str(sample),
            "--out",
            str(tmp_path / "p.json"),
            "--publish",
        ],
        env,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "published 'gmm' version 1" in fit.stderr

    worker = Worker(
        sasl_broker.bootstrap,
        topics,
        tmp_path,
        **{k: v for k, v in env.items() if k.startswith(("KAFKA_SASL", "KAFKA_SECURITY"))},
    ).start()
    try:
        assert worker.wait_ready()["model_version"] == 1
        produced = run(["producer.cli", "--topic", topics.input, "--count", "500"], env)
        assert produced.returncode == 0, produced.stderr[-2000:]
        wait_for(lambda: worker.metric("gmm_assignments_out_total") == 500, 60, message="500 out")
        cycle = run(["trainer.cli", "run", "--once"], env)
        assert cycle.returncode == 0, cycle.stderr[-2000:]
        assert json.loads(cycle.stdout.splitlines()[-1])["version"] == 2
        wait_for(lambda: worker.metric("gmm_model_version") == 2, 30, message="version 2 served")
    finally:
        worker.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["stream_app.main"],
        ["trainer.cli", "run", "--once"],
        ["producer.cli", "--count", "10"],
    ],
    ids=["worker", "trainer", "producer"],
)
def test_wrong_password_is_one_clear_line(sasl_broker, tmp_path, args):
    env = env_for(sasl_broker, Topics("saslbad"), "not-the-password", tmp_path)
    done = run(args, env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, lines
    assert "error: authentication failed at" in lines[0] and "'svc'" in lines[0]
