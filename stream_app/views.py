"""The worker's web views: Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_app.agents import holder
from stream_app.app import app, metrics


@app.page("/metrics")
async def prometheus_metrics(self: Any, request: Any) -> Any:
    """Faust's sensor and the service's metrics, from their one registry."""
    # As a header: aiohttp refuses a charset inside content_type.
    return self.bytes(
        generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


@app.page("/health")
async def health(self: Any, request: Any) -> Any:
    """Alive: the worker's event loop answers."""
    return self.json({"status": "alive"})


@app.page("/ready")
async def ready(self: Any, request: Any) -> Any:
    """Ready: a model is loaded and every padding size is compiled (503 until then)."""
    current = holder.current
    if current is None:
        return self.json({"ready": False, "reason": "no model yet"}, status=503)
    return self.json(
        {
            "ready": True,
            "model_version": current.model.version,
            "compiled_sizes": list(current.classifier.sizes),
            "compilations": current.classifier.compilations,
        }
    )
