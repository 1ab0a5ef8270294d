"""A real Alertmanager (the Debian package) for tests, and a webhook receiver it notifies."""

from __future__ import annotations

import http.server
import json
import pathlib
import shutil
import threading
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.integration.deploy.prometheus import LocalServer

COMPOSE_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


def binary() -> str | None:
    """Alertmanager's executable: `prometheus-alertmanager` in Debian, `alertmanager` upstream."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class WebhookReceiver:
    """An HTTP endpoint standing in for the receiver a user configures: keeps every
    notification Alertmanager posts (firing and resolved)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = self._lock = threading.Lock()
        received = self.notifications

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        """The alerts named `alertname` notified with `status` ("firing" or "resolved")."""
        with self._lock:
            return [
                alert
                for note in self.notifications
                for alert in note["alerts"]
                if alert["labels"]["alertname"] == alertname and alert["status"] == status
            ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def local_config(receiver_url: str) -> dict:
    """The compose configuration (routes, inhibition), its receiver pointed at `receiver_url`
    and its waits shortened to a second so a test sees notifications at once."""
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver["webhook_configs"]:
            webhook["url"] = receiver_url
    route = config["route"]
    route.update(group_wait="1s", group_interval="1s")
    return config


class Alertmanager(LocalServer):
    def __init__(self, config: dict, workdir: pathlib.Path) -> None:
        super().__init__(
            "alertmanager",
            config,
            workdir,
            lambda path, port: [
                binary() or "alertmanager",
                f"--config.file={path}",
                f"--storage.path={workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
        )

    def active(self, alertname: str) -> list[dict[str, Any]]:
        """The alerts named `alertname` Alertmanager holds as active now (its API v2)."""
        return self.get(f"/api/v2/alerts?filter=alertname%3D%22{alertname}%22")
