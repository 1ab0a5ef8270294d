"""A real Prometheus (the Debian package) for tests, and the dashboard's queries run through it."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from support.harness import free_port
from tests.conftest import ROOT

COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gmm-stream.json"


def require(**tools: str | None) -> None:
    """Skips the test when a tool is missing (name: its path or None), with the package that
    has it; fails instead where GMM_CI is set (CI installs them all)."""
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        message = f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})"
        if os.environ.get("GMM_CI"):
            pytest.fail(f"GMM_CI is set: {message}")
        pytest.skip(message)


def local_config(
    targets: dict[str, list[str]],
    scrape_interval: str = "1s",
    rules_dir: pathlib.Path = RULES_DIR,
    alertmanager: str | None = None,
) -> dict:
    """The compose configuration, with each job's targets replaced by local addresses, the
    rule files read from `rules_dir` and alerts sent to `alertmanager` (host:port; None: none)."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(rules_dir / pathlib.Path(f).name) for f in config["rule_files"]]
    if alertmanager is None:
        config.pop("alerting")
    else:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


_DURATION = re.compile(r"(\d+)([smh])")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _scaled(duration: str, factor: float) -> str:
    (number, unit) = _DURATION.fullmatch(duration).groups()  # type: ignore[union-attr]
    return f"{max(1, round(int(number) * _SECONDS[unit] * factor))}s"


def compressed_rules(workdir: pathlib.Path, factor: float) -> pathlib.Path:
    """The rule files with every `for:` and range selector scaled by `factor`: the same
    expressions and thresholds, on a clock a test can wait for (1/20: `for: 2m` is 6 s, a
    15-minute increase() window 45 s). Thresholds in values, seconds included, are kept."""
    out = workdir / "rules"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(RULES_DIR.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                rule["expr"] = re.sub(
                    r"\[(\d+[smh])\]",
                    lambda m: f"[{_scaled(m.group(1), factor)}]",
                    rule["expr"],
                )
                if "for" in rule:
                    rule["for"] = _scaled(rule["for"], factor)
        (out / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


class LocalServer:
    """A server of the Prometheus family run by a test: its configuration written to workdir,
    a free loopback port, its log beside them; both servers answer /-/ready when started."""

    def __init__(
        self,
        name: str,
        config: dict,
        workdir: pathlib.Path,
        command: Callable[[pathlib.Path, int], list[str]],
    ) -> None:
        self.port = free_port()
        path = workdir / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            command(path, self.port), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Prometheus(LocalServer):
    def __init__(self, config: dict, workdir: pathlib.Path) -> None:
        super().__init__(
            "prometheus",
            config,
            workdir,
            lambda path, port: [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )

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


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
