"""The worker's web views: Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_app.worker import Worker


def register(app: faust.App, worker: Worker) -> None:
    """Adds /metrics, /health and /ready to `app`'s web server."""

    @app.page("/metrics")
    async def prometheus_metrics(self: Any, request: Any) -> Any:
        """Faust's sensor and the service's metrics, from their one registry."""
        # As a header: aiohttp refuses a charset inside content_type.
        return self.bytes(
            generate_latest(worker.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    @app.page("/health")
    async def health(self: Any, request: Any) -> Any:
        """Alive: the worker's event loop answers."""
        return self.json({"status": "alive"})

    @app.page("/ready")
    async def ready(self: Any, request: Any) -> Any:
        """Ready: a model is compiled and served, and delivery and commits are not stuck
        (503 with the reason otherwise)."""
        ok, details = worker.readiness()
        return self.json(details, status=200 if ok else 503)
