"""What the trainer reads from the events topic: drift alarms and the workers' shadow scores.

Workers report their running shadow totals per candidate version (`kind: shadow`, one worker's
totals in `data`), repeatedly; `ShadowTally` keeps each worker's latest report and adds them up,
so a report sent twice counts once. A `drift` alarm about the served version asks for a refit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NamedTuple

from kafka_common.events import Event, EventError
from kafka_common.settings import KafkaSettings
from kafka_common.topics import assigned_consumer

log = logging.getLogger(__name__)


class ShadowTotals(NamedTuple):
    records: int
    candidate_log_likelihood: float
    served_log_likelihood: float
    agreements: int


#: At most this many (candidate, served, worker) totals are kept: a flood of forged worker ids
#: cannot grow the trainer's memory.
MAX_REPORTERS = 10_000


class ShadowTally:
    """Every worker's latest shadow totals, per (candidate version, served version)."""

    def __init__(self) -> None:
        self._latest: dict[tuple[int, int, str], ShadowTotals] = {}

    def update(self, event: Event) -> bool:
        """Takes a `shadow` event; False if it is malformed (then ignored)."""
        data = event.data or {}
        served, worker = data.get("served_version"), data.get("worker")
        records, agreements = data.get("records"), data.get("agreements")
        lls = (data.get("candidate_log_likelihood"), data.get("served_log_likelihood"))
        # Event validation already refused NaN, infinities and nested values; counts must be
        # integers (no bools, no strings) with agreements within records, sums numbers.
        if (
            type(served) is not int
            or not isinstance(worker, str)
            or type(records) is not int
            or type(agreements) is not int
            or not 0 <= agreements <= records
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in lls)
        ):
            log.warning("ignoring a malformed shadow report: %s", data)
            return False
        if len(self._latest) >= MAX_REPORTERS:
            log.warning("ignoring a shadow report: %d reporters already", MAX_REPORTERS)
            return False
        key = (event.version, served, worker)
        totals = ShadowTotals(records, float(lls[0]), float(lls[1]), agreements)  # type: ignore[arg-type]
        previous = self._latest.get(key)
        if previous is None or totals.records >= previous.records:  # totals only grow
            self._latest[key] = totals
        return True

    def totals(self, candidate: int, served: int) -> ShadowTotals:
        """The candidate's totals against the served version, summed over the workers."""
        parts = [t for (c, s, _), t in self._latest.items() if c == candidate and s == served]
        return ShadowTotals(
            sum(t.records for t in parts),
            sum(t.candidate_log_likelihood for t in parts),
            sum(t.served_log_likelihood for t in parts),
            sum(t.agreements for t in parts),
        )

    def forget(self, candidate: int) -> None:
        self._latest = {k: v for k, v in self._latest.items() if k[0] != candidate}


async def follow_events(kafka: KafkaSettings, topic: str) -> AsyncIterator[Event]:
    """Valid events from the topic's end on (earlier alarms are about earlier moments)."""
    consumer, _ = await assigned_consumer(kafka, topic)
    try:
        await consumer.seek_to_end()
        while True:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        yield Event.loads(record.value or b"")
                    except EventError as exc:
                        log.warning("ignoring an invalid event: %s", exc)
    finally:
        await consumer.stop()
