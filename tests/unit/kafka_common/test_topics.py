"""Finding a topic's partitions: as soon as the metadata tells them, never a pause more."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from kafka_common import topics
from kafka_common.topics import topic_partitions

pytestmark = pytest.mark.unit


class _Client:
    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer

    async def force_metadata_update(self) -> bool:
        self.consumer.refreshes += 1
        if self.consumer.refreshes >= self.consumer.known_after:
            self.consumer.known = {2, 0, 1}
        return True


class _Consumer:
    """Stands in for AIOKafkaConsumer: the topic's partitions are known after `known_after`
    metadata refreshes (0: from the start; never: a topic that does not exist)."""

    def __init__(self, known_after: float) -> None:
        self.known_after = known_after
        self.refreshes = 0
        self.known: set[int] | None = {0, 1, 2} if known_after == 0 else None
        self._client = _Client(self)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.known


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses topic_partitions takes (recorded, not slept)."""
    taken: list[float] = []

    async def sleep(seconds: float, *_: Any) -> None:
        taken.append(seconds)

    monkeypatch.setattr(topics.asyncio, "sleep", sleep)
    return taken


def _partitions(consumer: _Consumer, wait_s: float = 5.0) -> list[TopicPartition]:
    return asyncio.run(topic_partitions(consumer, "t", wait_s))  # type: ignore[arg-type]


EXPECTED = [TopicPartition("t", p) for p in (0, 1, 2)]


def test_known_partitions_are_returned_without_a_refresh(pauses: list[float]) -> None:
    consumer = _Consumer(known_after=0)
    assert _partitions(consumer) == EXPECTED
    assert consumer.refreshes == 0 and pauses == []


def test_partitions_one_refresh_tells_are_returned_at_once(pauses: list[float]) -> None:
    # The common case for a topic that exists: the consumer's first metadata did not ask for
    # it. Used to pause 0.1 s after the refresh that told it (a tenth of a second on every
    # window read of the trainer).
    consumer = _Consumer(known_after=1)
    assert _partitions(consumer) == EXPECTED
    assert consumer.refreshes == 1 and pauses == []


def test_a_topic_being_created_is_looked_up_again_after_pauses(pauses: list[float]) -> None:
    consumer = _Consumer(known_after=3)
    assert _partitions(consumer) == EXPECTED
    assert consumer.refreshes == 3 and pauses == [0.1, 0.1]


def test_a_missing_topic_gives_up_after_wait_s(pauses: list[float]) -> None:
    consumer = _Consumer(known_after=float("inf"))
    assert _partitions(consumer, wait_s=1.0) == []
    assert consumer.refreshes == 10 and pauses == [0.1] * 9
