"""The worker's events sink: drift alarms and shadow reports, sent without ever holding up
serving.

An event is information: a send that fails is counted (`gmm_events_errors_total`) and logged,
and the stream goes on. Without an events topic (`GMM_EVENTS_TOPIC` empty) events are dropped.
"""

from __future__ import annotations

import asyncio
import logging

from kafka_common.events import EventProducer
from stream_app.metrics import WorkerMetrics
from wire.event import Event

log = logging.getLogger(__name__)


class EventSink:
    """Sends events in the background through `producer` (None: no events topic)."""

    def __init__(self, producer: EventProducer | None, metrics: WorkerMetrics) -> None:
        self.producer = producer
        self.metrics = metrics
        self._sending: set[asyncio.Task] = set()

    @property
    def enabled(self) -> bool:
        return self.producer is not None

    def send(self, event: Event) -> None:
        """Starts sending `event`; returns at once."""
        if self.producer is None:
            return
        task = asyncio.ensure_future(self._send(self.producer, event))
        task.set_name(f"gmm-event-{event.kind}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, producer: EventProducer, event: Event) -> None:
        try:
            await producer.send(event)
        except Exception as exc:  # an event is information: serving goes on without it
            self.metrics.events_errors.inc()
            log.warning("could not send a %s event: %s", event.kind, exc)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
