"""The events topic's Kafka side: what a sender writes is the record of `wire.event`, keyed by
the model name, acknowledged by every replica."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from kafka_common import events
from kafka_common.events import DEFAULT_EVENTS_TOPIC, EventProducer, send_event
from kafka_common.settings import KafkaSettings
from wire.event import Event

pytestmark = pytest.mark.unit

TIME = "2025-01-01T12:00:00.000+00:00"


class _FakeProducer:
    """Stands in for AIOKafkaProducer: records its options and what it sends."""

    sent: ClassVar[list[tuple[str, bytes, bytes]]] = []
    options: ClassVar[list[dict[str, Any]]] = []
    headers: ClassVar[list[list | None]] = []

    def __init__(self, **options: Any) -> None:
        self.options.append(options)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes, headers: list | None = None
    ) -> None:
        self.sent.append((topic, value, key))
        self.headers.append(headers)


def test_default_topic():
    assert DEFAULT_EVENTS_TOPIC == "gmm.events"


def test_an_event_is_sent_as_its_record_keyed_by_the_model(monkeypatch):
    monkeypatch.setattr(events, "AIOKafkaProducer", _FakeProducer)
    _FakeProducer.sent, _FakeProducer.options = [], []
    event = Event("rollback", "gmm-a", 4, 2.0, TIME, "v2's parameters as v4")
    asyncio.run(send_event(KafkaSettings(), "ev", event))
    assert _FakeProducer.sent == [
        (
            "ev",
            b'{"kind":"rollback","model":"gmm-a","version":4,"statistic":2.0,'
            b'"time":"2025-01-01T12:00:00.000+00:00","detail":"v2\'s parameters as v4"}',
            b"gmm-a",
        )
    ]
    assert _FakeProducer.options[0]["acks"] == "all"


def test_a_producer_starts_once_for_many_events(monkeypatch):
    monkeypatch.setattr(events, "AIOKafkaProducer", _FakeProducer)
    _FakeProducer.sent, _FakeProducer.options = [], []

    async def run() -> None:
        producer = EventProducer(KafkaSettings(), "ev")
        for version in range(3):
            await producer.send(Event("drift", "gmm", version, 1.0, TIME))
        await producer.stop()

    asyncio.run(run())
    assert len(_FakeProducer.options) == 1 and len(_FakeProducer.sent) == 3
