"""The compose stack, checked structurally (no Docker engine runs here for `compose config`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services():
    assert set(SERVICES) == {
        "kafka",
        "kafka-init",
        "trainer",
        "worker",
        "producer",
        "prometheus",
        "grafana",
    }


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name):
    image = SERVICES[name].get("image", "")
    tag = image.rpartition(":")[2]
    assert ":" in image and tag and tag != "latest" and re.search(r"\d", tag), image


@pytest.mark.parametrize("name", ["kafka", "trainer", "worker", "prometheus", "grafana"])
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
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_kraft_and_topics():
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    init = " ".join(SERVICES["kafka-init"]["command"])
    for topic in ("gmm.points", "gmm.assignments", "gmm.deadletter", "gmm.params"):
        assert f"--topic {topic}" in init
    assert (
        "--topic gmm.params --partitions 1 --replication-factor 1 --config cleanup.policy=compact"
        in init
    )


def test_worker_scales_and_demo_producer_is_a_profile():
    assert "ports" not in SERVICES["worker"]  # a fixed host port would stop --scale worker=3
    assert SERVICES["producer"]["profiles"] == ["demo"]
    assert SERVICES["prometheus"]["ports"] == ["9090:9090"]
    assert SERVICES["grafana"]["ports"] == ["3000:3000"]


def test_no_secrets_committed():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${GF_SECURITY_ADMIN_PASSWORD:?" in text
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"


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
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/gmm-stream.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["datasources"][0]["uid"]}


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_where_available():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        cwd=ROOT,
        env={"GF_SECURITY_ADMIN_PASSWORD": "x", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
