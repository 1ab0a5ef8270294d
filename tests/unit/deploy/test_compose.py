"""The compose stack: checked structurally here, and by the real Docker Compose's `config`.

No Docker engine runs on this project's machines, but `docker compose config` needs none: CI
builds Docker Compose from its Go module (`make compose-tool`, cached outside the clone) and
points DOCKER_COMPOSE at it, and `test_compose_config_*` run it on every variant: default,
`--profile demo`, and each override file (`docker-compose.secure.yml`, a GPU one if present).
Without a Compose those tests skip, except where GMM_CI is set (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from kafka_common.settings import KafkaSettings, describe
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECURE_FILE = ROOT / "docker-compose.secure.yml"
SECURE = yaml.safe_load(SECURE_FILE.read_text())["services"]
OVERRIDES = sorted(ROOT.glob("docker-compose.*.yml"))  # secure, and GPU where it exists
APP_SERVICES = ("trainer", "worker", "producer")
BIND = "${GMM_BIND_ADDRESS:-127.0.0.1}"
# The variables through which the services reach a secured broker (kafka_common/settings.py).
KAFKA_SECURITY_VARS = {
    env for env, _, _ in describe(KafkaSettings) if re.search("SECURITY|SASL|SSL", env)
}
# The secure variant's per-service users and the variables their passwords come from.
USERS = {
    "trainer": "GMM_KAFKA_TRAINER_PASSWORD",
    "worker": "GMM_KAFKA_WORKER_PASSWORD",
    "producer": "GMM_KAFKA_PRODUCER_PASSWORD",
}


def test_services():
    assert set(SERVICES) == {
        "kafka",
        "kafka-init",
        "trainer",
        "worker",
        "producer",
        "prometheus",
        "alertmanager",
        "grafana",
    }


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name):
    image = SERVICES[name].get("image", "")
    tag = image.rpartition(":")[2]
    assert ":" in image and tag and tag != "latest" and re.search(r"\d", tag), image


@pytest.mark.parametrize(
    "name", ["kafka", "trainer", "worker", "prometheus", "alertmanager", "grafana"]
)
def test_long_running_services_have_healthchecks(name):
    assert SERVICES[name]["healthcheck"]["test"]


def test_services_wait_on_health():
    assert SERVICES["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("trainer", "worker"):
        assert (
            SERVICES[name]["depends_on"]["kafka-init"]["condition"]
            == "service_completed_successfully"
        )
    assert SERVICES["prometheus"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert SERVICES["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_started"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_kraft_and_topics():
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    init = " ".join(SERVICES["kafka-init"]["command"])
    for topic in ("gmm.points", "gmm.assignments", "gmm.deadletter", "gmm.params"):
        assert f"--topic {topic}" in init
    assert (
        "--topic gmm.params --partitions 1 --replication-factor 1 --config cleanup.policy=compact "
        "--config min.compaction.lag.ms=604800000" in init
    )


def test_worker_scales_and_demo_producer_is_a_profile():
    assert "ports" not in SERVICES["worker"]  # a fixed host port would stop --scale worker=3
    assert SERVICES["producer"]["profiles"] == ["demo"]
    assert SERVICES["prometheus"]["ports"] == [f"{BIND}:9090:9090"]
    assert SERVICES["grafana"]["ports"] == [f"{BIND}:3000:3000"]
    assert SERVICES["alertmanager"]["ports"] == [f"{BIND}:9093:9093"]


def test_host_ports_bind_to_loopback_unless_an_operator_says_otherwise():
    published = {name: s["ports"] for name, s in SERVICES.items() if "ports" in s}
    assert set(published) == {"kafka", "prometheus", "alertmanager", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith(f"{BIND}:"), f"{name}: {port} is on every interface"
    for name, service in SECURE.items():  # an override adds no port of its own
        assert "ports" not in service, name


def test_grafana_asks_for_a_login_unless_anonymous_access_is_enabled():
    env = SERVICES["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GF_AUTH_ANONYMOUS_ENABLED:-false}"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_kafka_security_settings_reach_every_service(name):
    assert {
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CAFILE",
    } == KAFKA_SECURITY_VARS
    env = SERVICES[name]["environment"]
    for var in KAFKA_SECURITY_VARS:
        assert env[var].startswith(f"${{{var}:-"), f"{name}.{var} is not passed through"
    assert env["KAFKA_SASL_PASSWORD"] == "${KAFKA_SASL_PASSWORD:-}"


def _environments():
    for path in (ROOT / "docker-compose.yml", *OVERRIDES):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            for key, value in (service.get("environment") or {}).items():
                yield path.name, name, key, str(value)


def test_no_secrets_committed():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${GF_SECURITY_ADMIN_PASSWORD:?" in text
    seen = 0
    for file, name, key, value in _environments():
        if re.search("PASSWORD|SECRET|TOKEN", key):
            seen += 1
            # required (`:?`) or empty by default (`:-}`): never a value written here
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)\}", value), (
                f"{file}: {name}.{key} must come from the environment"
            )
    assert seen >= 10
    for path in (ROOT / "docker-compose.yml", *OVERRIDES):
        # JAAS configs: every password="..." and user_NAME="..." is an interpolation
        for match in re.finditer(r'(password|user_\w+)="([^"]*)"', path.read_text()):
            assert match.group(2).startswith("${") and ":?" in match.group(2), match.group(0)


def test_grafana_provisioning_points_at_the_dashboard():
    mounts = " ".join(SERVICES["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert datasource["datasources"][1]["url"] == "http://alertmanager:9093"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/gmm-stream.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["datasources"][0]["uid"]}


# --- the secure variant (docker-compose.secure.yml) ------------------------------------------


def _listeners(value):
    return dict(item.split("://", 1) for item in value.split(","))


def _mount(service, target):
    """The bind mount of `target`: read-only, and never a directory made up for a missing file."""
    (mount,) = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == target]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert mount["bind"] == {"create_host_path": False}
    return mount


def test_secure_broker_speaks_only_sasl_ssl_to_clients():
    env = SECURE["kafka"]["environment"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = _listeners(env["KAFKA_LISTENERS"])
    assert set(protocols) == set(listeners) == {"INTERNAL", "EXTERNAL", "CONTROLLER"}
    assert protocols["INTERNAL"] == protocols["EXTERNAL"] == "SASL_SSL"
    # The controller listener is on loopback inside the container, and authenticated too.
    assert protocols["CONTROLLER"] == "SASL_PLAINTEXT"
    assert listeners["CONTROLLER"].startswith("localhost:")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9093"
    assert "PLAINTEXT" not in protocols.values()
    assert set(_listeners(env["KAFKA_ADVERTISED_LISTENERS"])) == {"INTERNAL", "EXTERNAL"}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    # The listener names hold no "SSL://": the image's own keystore handling stays out of it.
    assert "SSL://" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_SSL_KEYSTORE_LOCATION"] == "/etc/kafka/secrets/broker.p12"
    keystore = _mount(SECURE["kafka"], "/etc/kafka/secrets/broker.p12")
    assert keystore["source"].endswith("/broker.p12")
    # No KAFKA_* setting the broker does not know (the image writes them all to server.properties).
    assert "KAFKA_SSL_CAFILE" not in env


def test_secure_broker_denies_what_no_acl_allows():
    env = SECURE["kafka"]["environment"]
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert env["KAFKA_SUPER_USERS"] == "User:broker"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"


def _jaas_users(jaas):
    return dict(re.findall(r'user_(\w+)="([^"]*)"', jaas))


def test_secure_broker_users():
    env = SECURE["kafka"]["environment"]
    internal = env["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
    assert env["KAFKA_LISTENER_NAME_EXTERNAL_PLAIN_SASL_JAAS_CONFIG"] == internal
    assert "\n" not in internal  # one line in server.properties
    users = _jaas_users(internal)
    broker = "${GMM_KAFKA_BROKER_PASSWORD:?set GMM_KAFKA_BROKER_PASSWORD}"
    assert users == {
        "broker": broker,
        **{user: f"${{{var}:?set {var}}}" for user, var in USERS.items()},
    }
    assert f'username="broker" password="{broker}"' in internal
    # Only the broker itself logs in on the controller listener.
    assert _jaas_users(env["KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG"]) == {
        "broker": broker
    }


@pytest.mark.parametrize("name", APP_SERVICES)
def test_secure_services_each_log_in_as_their_own_user(name):
    env = SECURE[name]["environment"]
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert env["KAFKA_SASL_USERNAME"] == name
    assert env["KAFKA_SASL_PASSWORD"] == f"${{{USERS[name]}:?set {USERS[name]}}}"
    assert env["KAFKA_SSL_CAFILE"] == "/etc/gmm/tls/ca.pem"
    (mount,) = SECURE[name]["volumes"]  # the CA only, never the keystore
    assert mount == _mount(SECURE["kafka"], "/etc/gmm/tls/ca.pem")
    assert mount["source"].startswith("${GMM_KAFKA_TLS_DIR:?") and mount["source"].endswith(
        "/ca.pem"
    )
    assert set(env) >= KAFKA_SECURITY_VARS


def test_secure_init_and_healthcheck_run_the_script():
    assert SECURE["kafka"]["healthcheck"]["test"] == [
        "CMD", "bash", "/opt/gmm/kafka-secure.sh", "health"
    ]  # fmt: skip
    assert SECURE["kafka-init"]["command"] == ["exec bash /opt/gmm/kafka-secure.sh init"]
    assert SERVICES["kafka-init"]["entrypoint"] == ["/bin/bash", "-c"]
    for name in ("kafka", "kafka-init"):
        assert "./deploy/compose:/opt/gmm:ro" in SECURE[name]["volumes"]
        assert SECURE[name]["environment"]["GMM_KAFKA_CA_FILE"] == "/etc/gmm/tls/ca.pem"


SCRIPT = ROOT / "deploy/compose/kafka-secure.sh"


def _acls(env=None):
    out = subprocess.run(
        ["bash", str(SCRIPT), "acls"],
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    grants = set()
    for line in out.splitlines():
        words = line.split()
        principal = words[words.index("--allow-principal") + 1]
        prefixed = "prefixed" in words
        ops = [words[i + 1] for i, w in enumerate(words) if w == "--operation"]
        for kind in ("topic", "group", "transactional-id"):
            for name in (words[i + 1] for i, w in enumerate(words) if w == f"--{kind}"):
                for op in ops:
                    grants.add((principal, op, kind, name + ("*" if prefixed else "")))
    return grants


def test_secure_acls_are_least_privilege():
    assert _acls() == {
        ("User:trainer", "Read", "topic", "gmm.points"),
        ("User:trainer", "Read", "topic", "gmm.params"),
        ("User:trainer", "Write", "topic", "gmm.params"),
        ("User:trainer", "Read", "topic", "gmm.params.history"),
        ("User:trainer", "Write", "topic", "gmm.params.history"),
        ("User:trainer", "Read", "topic", "gmm.events"),
        ("User:trainer", "Write", "topic", "gmm.events"),
        ("User:trainer", "Write", "transactional-id", "gmm-params-publisher-*"),
        ("User:trainer", "Describe", "transactional-id", "gmm-params-publisher-*"),
        ("User:worker", "Read", "topic", "gmm.points"),
        ("User:worker", "Read", "topic", "gmm.params"),
        ("User:worker", "Write", "topic", "gmm.assignments"),
        ("User:worker", "Write", "topic", "gmm.deadletter"),
        ("User:worker", "Write", "topic", "gmm.events"),
        ("User:worker", "Read", "group", "gmm-worker"),
        ("User:worker", "Read", "group", "gmm-worker-app"),
        ("User:worker", "Create", "topic", "gmm-worker-app-*"),
        ("User:worker", "Read", "topic", "gmm-worker-app-*"),
        ("User:worker", "Write", "topic", "gmm-worker-app-*"),
        ("User:producer", "Write", "topic", "gmm.points"),
    }
    # Only the trainer may write models.
    for topic in ("gmm.params", "gmm.params.history"):
        writers = {p for p, op, kind, name in _acls() if op == "Write" and name == topic}
        assert writers == {"User:trainer"}


def test_secure_acls_follow_the_topic_and_group_settings():
    grants = _acls({"GMM_PARAMS_TOPIC": "models", "GMM_CONSUMER_GROUP": "g"})
    assert ("User:trainer", "Write", "topic", "models") in grants
    assert ("User:worker", "Read", "group", "g-app") in grants
    assert not any(name == "gmm.params" for *_, name in grants)


FAKE_TOOL = """#!/usr/bin/env bash
# Records its arguments, and the client config it was given, as a Kafka tool would read it.
printf '%s\\n' "$(basename "$0") $*" >>"$LOG"
while (($#)); do
  if [[ $1 == --command-config ]]; then cp "$2" "$LOG.conf"; echo "$2" >"$LOG.path"; fi
  shift
done
"""


def test_secure_init_keeps_the_password_off_command_lines(tmp_path):
    password = "pw-that-must-not-leak"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kafka-topics.sh", "kafka-acls.sh", "kafka-broker-api-versions.sh"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(bin_dir),
        "LOG": str(log),
        "TMPDIR": str(tmp_path),
        "GMM_KAFKA_BROKER_PASSWORD": password,
        "GMM_KAFKA_CA_FILE": "/etc/gmm/tls/ca.pem",
    }
    for command in ("init", "health"):
        result = subprocess.run(
            ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert sum(c.startswith("kafka-topics.sh ") for c in calls) == 6
    assert sum(c.startswith("kafka-acls.sh ") for c in calls) == len(_acls_lines())
    assert calls[-1].startswith("kafka-broker-api-versions.sh --bootstrap-server kafka:9092")
    assert all("--command-config" in c for c in calls)
    assert password not in log.read_text()  # on no command line
    conf = (tmp_path / "calls.log.conf").read_text()
    assert "security.protocol=SASL_SSL\n" in conf
    assert "ssl.truststore.location=/etc/gmm/tls/ca.pem\n" in conf
    assert f'username="broker" password="{password}";' in conf
    # The config file was private to the process and is gone once it exits.
    conf_path = (tmp_path / "calls.log.path").read_text().strip()
    assert conf_path.startswith(str(tmp_path)) and not os.path.exists(conf_path)
    # Without the password it stops at once, naming the variable.
    del env["GMM_KAFKA_BROKER_PASSWORD"]
    result = subprocess.run(["bash", str(SCRIPT), "init"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "GMM_KAFKA_BROKER_PASSWORD" in result.stderr


def _acls_lines():
    out = subprocess.run(["bash", str(SCRIPT), "acls"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


# --- the real Docker Compose -------------------------------------------------------------------


def _find_compose():
    """The Compose command, its program as an absolute path: $DOCKER_COMPOSE (a path, or e.g.
    `docker compose`), a docker-compose on PATH, or the docker CLI's compose plugin; None if
    there is none."""
    configured = shlex.split(os.environ.get("DOCKER_COMPOSE", ""))
    if configured:
        program = shutil.which(configured[0])
        return [program, *configured[1:]] if program else configured
    if program := shutil.which("docker-compose"):
        return [program]
    if program := shutil.which("docker"):
        probe = subprocess.run([program, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [program, "compose"]
    return None


@pytest.fixture(scope="module")
def compose():
    command = _find_compose()
    if command is None:
        message = "no Docker Compose here: `make compose-tool` builds one (DOCKER_COMPOSE=its path)"
        if os.environ.get("GMM_CI"):
            pytest.fail(f"GMM_CI is set: {message}")
        pytest.skip(message)
    version = subprocess.run([*command, "version"], capture_output=True, text=True)
    assert version.returncode == 0, f"{shlex.join(command)} version: {version.stderr}"
    return command


def _secrets_env(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    (tls / "ca.pem").write_text("test CA\n")
    (tls / "broker.p12").write_text("test keystore\n")
    return {
        "GF_SECURITY_ADMIN_PASSWORD": "test-grafana",
        "GMM_KAFKA_TLS_DIR": str(tls),
        "GMM_KAFKA_KEYSTORE_PASSWORD": "test-keystore",
        "GMM_KAFKA_BROKER_PASSWORD": "test-broker",
        **{var: f"test-{user}" for user, var in USERS.items()},
    }


def _run(compose, args, env):
    # Only the variables the test gives, no COMPOSE_*, GMM_* or KAFKA_* of the caller's (PATH
    # and HOME stay: the docker CLI finds its compose plugin through them).
    keep = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        # --env-file: a developer's untracked .env must not supply what a test leaves out
        [*compose, "--project-directory", str(ROOT), "--env-file", os.devnull, *args],
        cwd=ROOT,
        env={**keep, **env},
        capture_output=True,
        text=True,
    )


VARIANTS = [
    pytest.param([], id="default"),
    pytest.param(["--profile", "demo"], id="demo"),
    *(
        pytest.param(["-f", "docker-compose.yml", "-f", path.name], id=path.stem.split(".")[1])
        for path in OVERRIDES
    ),
    *(
        pytest.param(
            ["-f", "docker-compose.yml", "-f", path.name, "--profile", "demo"],
            id=f"{path.stem.split('.')[1]}-demo",
        )
        for path in OVERRIDES
    ),
]


def test_variants_include_the_secure_one():
    assert SECURE_FILE in OVERRIDES
    ids = [p.id for p in VARIANTS]
    assert {"default", "demo", "secure", "secure-demo"} <= set(ids)
    if (ROOT / "docker-compose.gpu.yml").exists():
        assert "gpu" in ids


@pytest.mark.parametrize("args", VARIANTS)
def test_compose_config_accepts_every_variant(compose, args, tmp_path):
    result = _run(compose, [*args, "config", "--quiet"], _secrets_env(tmp_path))
    assert result.returncode == 0, result.stderr


def _rendered(compose, args, env):
    result = _run(compose, [*args, "config", "--format", "json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_config_binds_host_ports_to_loopback(compose, tmp_path):
    env = _secrets_env(tmp_path)
    for args in ([], ["-f", "docker-compose.yml", "-f", SECURE_FILE.name]):
        services = _rendered(compose, args, env)
        ports = [p for s in services.values() for p in s.get("ports", [])]
        assert len(ports) == 4 and {p["host_ip"] for p in ports} == {"127.0.0.1"}, ports
        assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    services = _rendered(compose, [], {**env, "GMM_BIND_ADDRESS": "0.0.0.0"})
    assert {p["host_ip"] for s in services.values() for p in s.get("ports", [])} == {"0.0.0.0"}


def test_compose_config_secure_variant_merged(compose, tmp_path):
    env = _secrets_env(tmp_path)
    args = ["-f", "docker-compose.yml", "-f", SECURE_FILE.name, "--profile", "demo"]
    services = _rendered(compose, args, env)
    for name in APP_SERVICES:
        service_env = services[name]["environment"]
        assert service_env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert service_env["KAFKA_SASL_USERNAME"] == name
        assert service_env["KAFKA_SASL_PASSWORD"] == f"test-{name}"
        assert service_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"  # the base file's, kept
        targets = {v["target"] for v in services[name].get("volumes", [])}
        assert "/etc/gmm/tls/ca.pem" in targets
        assert "/etc/kafka/secrets/broker.p12" not in targets
    assert "/reports" in {v["target"] for v in services["trainer"]["volumes"]}
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"  # base settings survive the merge
    assert (
        'user_worker="test-worker"' in kafka["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
    )


SECURE_ARGS = ["-f", "docker-compose.yml", "-f", SECURE_FILE.name]
SECURE_SECRETS = (
    "GF_SECURITY_ADMIN_PASSWORD",
    "GMM_KAFKA_BROKER_PASSWORD",
    *USERS.values(),
    "GMM_KAFKA_KEYSTORE_PASSWORD",
    "GMM_KAFKA_TLS_DIR",
)


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        pytest.param([], "GF_SECURITY_ADMIN_PASSWORD", id="default-GF_SECURITY_ADMIN_PASSWORD"),
        *(pytest.param(SECURE_ARGS, var, id=f"secure-{var}") for var in SECURE_SECRETS),
    ],
)
def test_compose_config_rejects_a_missing_secret(compose, args, missing, tmp_path):
    env = _secrets_env(tmp_path)
    del env[missing]
    result = _run(compose, [*args, "config", "--quiet"], env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_prometheus_loads_the_rules_and_sends_alerts_to_alertmanager():
    mounts = " ".join(SERVICES["prometheus"]["volumes"])
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in " ".join(
        SERVICES["alertmanager"]["volumes"]
    )
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in SERVICES["alertmanager"]["command"]
