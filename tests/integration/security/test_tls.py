"""TLS for real: a throwaway CA and broker certificate, a broker with SASL_SSL (PLAIN and
SCRAM-SHA-512) and SSL listeners, and the worker, the trainer and the producer connecting with
KAFKA_SSL_CAFILE. A client that trusts another CA stops with one line naming the TLS failure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.harness import Broker, Topics, Worker, run_trainer_once, trainer_env, wait_for
from support.security import SCRAM, AdminTools, TestPKI, plain_jaas, service_env, settings_of

pytestmark = pytest.mark.slow

ADMIN = ("admin", "admin-secret")
PLAIN_USERS = {"admin": "admin-secret", "svc": "svc-secret"}
SCRAM_USER = ("scram512", "scram-secret")  # created through the broker's admin API


def broker_props(pki: TestPKI) -> str:
    # Clients: SASL_SSL on {port} (also the broker's own listener), SSL on {port:ssl}. The
    # controller is on loopback, authenticated like the rest. The key is an unencrypted PEM.
    return f"""
listeners=SASL_SSL://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{cport}},SSL://127.0.0.1:{{port:ssl}}
advertised.listeners=SASL_SSL://127.0.0.1:{{port}},SSL://127.0.0.1:{{port:ssl}}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT,SSL:SSL
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config={plain_jaas(*ADMIN, PLAIN_USERS)}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={SCRAM};
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas(*ADMIN, {ADMIN[0]: ADMIN[1]})}
ssl.keystore.type=PEM
ssl.keystore.location={pki.broker_keystore}
ssl.truststore.type=PEM
ssl.truststore.location={pki.ca_file}
"""


def admin_client_props(pki: TestPKI) -> str:
    return (
        f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
        f"sasl.jaas.config={plain_jaas(*ADMIN)}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={pki.ca_file}\n"
    )


class TLS:
    def __init__(self, broker: Broker, pki: TestPKI) -> None:
        self.broker, self.pki = broker, pki
        self.ssl_bootstrap = f"127.0.0.1:{broker.ports['ssl']}"

    def env(self, how: str, cafile: str = "") -> dict[str, str]:
        """KAFKA_* for `how`: ssl, plain (SASL_SSL with PLAIN) or scram (SASL_SSL with
        SCRAM-SHA-512)."""
        ca = cafile or str(self.pki.ca_file)
        if how == "ssl":
            return service_env(self.ssl_bootstrap, "SSL", cafile=ca)
        if how == "plain":
            return service_env(self.broker.bootstrap, "SASL_SSL", "svc", "svc-secret", cafile=ca)
        return service_env(self.broker.bootstrap, "SASL_SSL", *SCRAM_USER, "SCRAM-SHA-512", ca)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    pki = TestPKI.create(base / "pki")
    broker = Broker(base / "broker", broker_props(pki), admin_client_props(pki)).up()
    try:
        admin_env = service_env(broker.bootstrap, "SASL_SSL", *ADMIN, cafile=pki.ca_file)
        admin = AdminTools(broker, settings_of(admin_env))
        admin.scram_user("SCRAM-SHA-512", *SCRAM_USER)
        yield TLS(broker, pki)
    finally:
        broker.down()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_the_stream_over_tls(tls, tmp_path):
    """The producer over SASL_SSL (PLAIN), the trainer over SASL_SSL (SCRAM-SHA-512), the worker
    over SSL: each checks the broker's certificate against KAFKA_SSL_CAFILE."""
    topics = Topics("tls")
    base = trainer_env(tls.broker.bootstrap, topics, tmp_path / "reports")
    produced = run(
        ["producer.cli", "--topic", topics.input, "--count", "2000"], {**base, **tls.env("plain")}
    )
    assert produced.returncode == 0, produced.stderr[-2000:]
    trained = run_trainer_once({**base, **tls.env("scram")})
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.splitlines()[-1])["version"] == 1
    assert "Authenticated as scram512 via SCRAM-SHA-512" in trained.stderr

    worker = Worker(tls.ssl_bootstrap, topics, tmp_path, **tls.env("ssl")).start()
    try:
        assert worker.wait_ready(120)["model_version"] == 1
        wait_for(lambda: worker.metric("gmm_assignments_out_total") == 2000, 60, message="2000 out")
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("args", "how"),
    [
        (["stream_app.main"], "plain"),
        (["stream_app.main"], "ssl"),
        (["trainer.cli", "run", "--once"], "scram"),
        (["producer.cli", "--count", "10"], "plain"),
        (["producer.cli", "--count", "10"], "ssl"),
    ],
    ids=["worker-sasl_ssl", "worker-ssl", "trainer-sasl_ssl", "producer-sasl_ssl", "producer-ssl"],
)
def test_another_ca_is_one_clear_line(tls, tmp_path, args, how):
    other = TestPKI.other_ca(tmp_path / "other-ca.pem")
    topics = Topics("tlsbad")
    env = {**trainer_env("", topics, tmp_path / "reports"), **tls.env(how, cafile=str(other))}
    done = run(args, env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, lines
    assert "TLS handshake with 127.0.0.1:" in lines[0]
    assert "the broker's certificate is not trusted" in lines[0]
    assert f"KAFKA_SSL_CAFILE={other} must hold the CA that signed it" in lines[0]


def test_a_wrong_scram_password_over_tls_is_one_clear_line(tls, tmp_path):
    env = {**trainer_env("", Topics("tlspw"), tmp_path), **tls.env("scram")}
    env["KAFKA_SASL_PASSWORD"] = "not-the-password"
    done = run(["producer.cli", "--count", "10"], env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error: authentication failed at" in lines[0]
    assert "'scram512' (SCRAM-SHA-512)" in lines[0]


def test_a_missing_ca_file_is_a_settings_error(tls, tmp_path):
    env = {**trainer_env("", Topics("tlsca"), tmp_path), **tls.env("ssl")}
    env["KAFKA_SSL_CAFILE"] = str(tmp_path / "missing.pem")
    done = run(["stream_app.main"], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"gmm-worker: error: KAFKA_SSL_CAFILE={str(tmp_path / 'missing.pem')!r} cannot be read: "
        "No such file or directory"
    ]
