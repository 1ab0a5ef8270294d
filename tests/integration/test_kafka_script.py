"""deploy/kafka/kafka.sh: idempotent start, clean stop, cached jars (a broker on its own port)."""

from __future__ import annotations

import os
import subprocess

from support.harness import free_port_pair
from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "kafka" / "kafka.sh"


def run(cmd: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=180
    )


def broker_pids(state_dir) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-f", f"{state_dir}/server.properties"], capture_output=True, text=True
    )
    return out.stdout.split()


def test_up_twice_then_down_leaves_no_broker(tmp_path, kafka_bootstrap):
    # kafka_bootstrap: the shared jars are fetched already, so nothing here touches Maven.
    port = free_port_pair()
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_STATE_DIR": str(tmp_path / "broker")}
    try:
        first = run("up", env)
        assert first.returncode == 0, first.stderr
        assert "ready on" in first.stdout
        assert "fetching" not in first.stderr  # jars came from the cache
        second = run("up", env)
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert broker_pids(tmp_path / "broker")
    finally:
        down = run("down", env)
    assert down.returncode == 0
    assert broker_pids(tmp_path / "broker") == []
    assert run("status", env).returncode == 1


def test_missing_java_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin/nonexistent:/bin", "KAFKA_STATE_DIR": str(tmp_path)}
    # /bin holds bash and coreutils but (on Debian) no java: the script must say so in one line.
    env["PATH"] = str(tmp_path / "bin")
    (tmp_path / "bin").mkdir()
    for tool in ("dirname", "awk", "sha256sum", "cat", "cut"):
        src = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        os.symlink(src, tmp_path / "bin" / tool)
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["kafka: Java 17+ is required but 'java' is not on PATH"]
