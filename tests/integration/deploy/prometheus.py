"""A real Prometheus (the Debian package) for tests, and the dashboard's queries run through it."""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any

import yaml

from support.harness import free_port
from tests.conftest import ROOT

COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gmm-stream.json"


def local_config(targets: dict[str, list[str]], scrape_interval: str = "1s") -> dict:
    """The compose configuration, with each job's targets replaced by local addresses."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


class Prometheus:
    def __init__(self, config: dict, workdir: pathlib.Path) -> None:
        self.port = free_port()
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def targets_up(self) -> bool:
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if data["status"] != "success":
            raise AssertionError(f"query failed: {expr}: {data}")
        return data["data"]["result"]

    def has_data(self, expr: str) -> bool:
        """True if the query returns at least one finite sample."""
        return any(math.isfinite(float(r["value"][1])) for r in self.query(expr))

    def without_data(self, exprs: list[str], timeout: float) -> list[str]:
        """The queries that still return no finite sample when timeout runs out."""
        pending = list(exprs)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = [e for e in pending if not self.has_data(e)]
            if pending:
                time.sleep(1)
        return pending

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
