"""What the trainer reads from the events topic: drift alarms and the workers' shadow reports.

Workers report their running shadow totals per candidate version (`wire.shadow_report`: a
`shadow` event, one worker's totals in `data`), repeatedly; `ShadowTally` keeps each worker's
latest report and adds them up, so a report sent twice counts once. A `drift` alarm about the
served version asks for a refit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from kafka_common.settings import KafkaSettings
from kafka_common.topics import assigned_consumer
from wire.event import Event, EventError
from wire.shadow_report import ShadowReport, ShadowReportError, ShadowTotals

log = logging.getLogger(__name__)

#: At most this many (candidate, served, worker) totals are kept: a flood of forged worker ids
#: cannot grow the trainer's memory.
MAX_REPORTERS = 10_000


class ShadowTally:
    """Every worker's latest shadow totals, per (candidate version, served version)."""

    def __init__(self) -> None:
        self._latest: dict[tuple[int, int, str], ShadowTotals] = {}

    def update(self, event: Event) -> bool:
        """Takes a `shadow` event; False if it is malformed (then ignored)."""
        try:
            report = ShadowReport.from_event(event)
        except ShadowReportError as exc:
            log.warning("ignoring a malformed shadow report (%s): %s", exc, event.data)
            return False
        if len(self._latest) >= MAX_REPORTERS:
            log.warning("ignoring a shadow report: %d reporters already", MAX_REPORTERS)
            return False
        key = (report.version, report.served_version, report.worker)
        previous = self._latest.get(key)
        if previous is None or report.totals.records >= previous.records:  # totals only grow
            self._latest[key] = report.totals
        return True

    def totals(self, candidate: int, served: int) -> ShadowTotals:
        """The candidate's totals against the served version, summed over the workers."""
        return ShadowTotals.sum_of(
            t for (c, s, _), t in self._latest.items() if c == candidate and s == served
        )

    def forget(self, candidate: int) -> None:
        """Drops the candidate's totals (it was promoted or rejected)."""
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
