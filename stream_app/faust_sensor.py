"""Faust's own Prometheus sensor, on the worker's registry: part of the Faust app, so the rest
of the worker (metrics, model holder, record path) runs without Faust."""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry, Histogram

#: Event runtimes: from 100 us to 10 s.
EVENT_RUNTIME_BUCKETS = (1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class FaustSensor(PrometheusMonitor):
    """Faust's own Prometheus sensor, with the event runtime in seconds.

    Faust names it `<prefix>_events_runtime_ms`, which `promtool check metrics` rejects (units
    belong in base form); it is the one Faust metric with a unit in its name, so it alone is
    replaced, by `<prefix>_events_runtime_seconds`.
    """

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: dict | None = None
    ) -> None:
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)
        self._metrics.total_active_events.dec()
        if state is not None:
            self._metrics.events_runtime_latency.observe(self.events_runtime[-1])


def faust_sensor(registry: CollectorRegistry, prefix: str = "faust") -> FaustSensor:
    """Faust's metrics on `registry` (the service's), ready to be the app's monitor."""
    metrics = FaustMetrics.create(registry, prefix)
    registry.unregister(metrics.events_runtime_latency)
    runtime = Histogram(
        f"{prefix}_events_runtime_seconds",
        "Stream event runtime",
        buckets=EVENT_RUNTIME_BUCKETS,
        registry=registry,
    )
    return FaustSensor(metrics=metrics._replace(events_runtime_latency=runtime))
