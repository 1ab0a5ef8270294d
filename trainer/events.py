"""What the trainer reads from the events topic: drift alarms and the workers' shadow reports.

Workers report their running shadow totals per candidate version (`wire.shadow_report`: a
`shadow` event, one worker's totals in `data`), repeatedly; `ShadowTally` keeps each worker's
latest report and adds them up, so a report sent twice counts once. A `drift` alarm about the
served version asks for a refit.

Both decide something (a promotion, a refit), so with GMM_EVENTS_VERIFY_KEY the trainer acts
only on those a listed worker key signed (`admit`, `kafka_common.event_signing`): an unsigned
or badly signed one is refused, counted (`gmm_trainer_events_refused_total{reason}`) and
changes nothing. A report is then trusted only within its key: the tally keeps reports per
(key, worker id), and at most MAX_REPORTERS_PER_KEY of them per key, so one key's flood of
worker ids cannot crowd out another key's reports. A report counts only for the candidate it
scored: its `candidate_digest` (`wire.shadow_report.model_digest`) must be the digest of the
candidate the trainer judges, so that an old signed report about an earlier candidate of the
same version number (versions can restart) cannot decide the new one; a signed report without
a digest (no current worker sends one) is refused too. Without verify keys every well-formed event
is taken as before: safe only while the broker's ACLs keep everyone but the workers and the
trainer off the events topic (docs/security.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from kafka_common.event_signing import EventVerifier, signature_of
from kafka_common.settings import KafkaSettings
from kafka_common.topics import assigned_consumer
from wire.event import Event, EventError
from wire.shadow_report import ShadowReport, ShadowReportError, ShadowTotals, model_digest

if TYPE_CHECKING:
    from mixture.params import ModelParams

log = logging.getLogger(__name__)

#: At most this many (candidate, served, key, worker) totals are kept: a flood of forged worker
#: ids cannot grow the trainer's memory.
MAX_REPORTERS = 10_000
#: ...and at most this many per verified worker key, so that one key (one worker's stolen
#: credentials and key) cannot fill the table and push out the other workers' reports.
MAX_REPORTERS_PER_KEY = 256

#: The event kinds that decide something (a promotion or rejection, a refit): with verify keys
#: only signed ones are taken. The trainer's own events (promoted, rejected, rollback) decide
#: nothing for it and are read as information.
DECIDING_KINDS = frozenset({"shadow", "drift"})

#: A refusal is logged at most once per reason in this many seconds (each one is counted).
LOG_EVERY_SECONDS = 60.0


class Received(NamedTuple):
    """An event the trainer may act on. reporter: the id (`fingerprint`) of the listed worker
    key that signed it, or None when nothing was verified (no verify keys configured, or a kind
    that decides nothing)."""

    event: Event
    reporter: str | None


class Refused(NamedTuple):
    """An event the trainer ignores: reason (a metric label: invalid, unsigned, bad_signature)
    and a one-line detail for the log."""

    reason: str
    detail: str


def admit(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    verifier: EventVerifier | None,
) -> Received | Refused:
    """Reads one events record: the event and who vouches for it, or why it is refused.

    Without `verifier` every valid event is received (reporter None). With it, a `shadow` or
    `drift` event must carry a signature of exactly this key and value by one of its keys."""
    try:
        event = Event.loads(value if value is not None else b"")
    except EventError as exc:
        return Refused("invalid", str(exc))
    if verifier is None or event.kind not in DECIDING_KINDS:
        return Received(event, None)
    if signature_of(headers) is None:
        return Refused("unsigned", f"a {event.kind} event on version {event.version} unsigned")
    reporter = verifier.signer_of(key, value, headers)
    if reporter is None:
        return Refused(
            "bad_signature",
            f"a {event.kind} event on version {event.version} not signed by a listed key",
        )
    return Received(event, reporter)


class RefusalLog:
    """Counts refusals (`count(reason)`) and logs them, at most one line per reason per
    LOG_EVERY_SECONDS: a flood of forged events must not flood the log too."""

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self.count = count
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, reason: str, detail: str) -> None:
        if self.count is not None:
            self.count(reason)
        self._since[reason] += 1
        now = time.monotonic()
        if now - self._last.get(reason, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            log.warning(
                "ignoring events (%s): %s (%d since the last such line)",
                reason,
                detail,
                self._since.pop(reason),
            )
            self._last[reason] = now


class ShadowTally:
    """Every worker's latest shadow totals, per (candidate version, served version, candidate
    digest).

    A worker is known by the key that signed its reports (None: not verified) and the id it
    gives: the same id under two keys is two workers. refused(reason, detail) hears of each
    report not taken (malformed, other_candidate, no_digest, too_many_reporters)."""

    def __init__(self, refused: Callable[[str, str], None] | None = None) -> None:
        self._latest: dict[tuple[int, int, str | None, str | None, str], ShadowTotals] = {}
        self._per_key: Counter[str | None] = Counter()
        self._refused = refused

    def _refuse(self, reason: str, detail: str) -> bool:
        if self._refused is not None:
            self._refused(reason, detail)
        else:
            log.warning("ignoring a shadow report (%s): %s", reason, detail)
        return False

    def update(
        self, event: Event, reporter: str | None = None, candidate_digest: str | None = None
    ) -> bool:
        """Takes a `shadow` event, vouched for by the worker key `reporter` (None: unverified),
        for the candidate whose `model_digest` is `candidate_digest` (None: not checked); False
        if it is ignored: malformed, about another candidate (its digest is not
        `candidate_digest`), signed but without a digest, or no room for a new reporter."""
        try:
            report = ShadowReport.from_event(event)
        except ShadowReportError as exc:
            return self._refuse("malformed", f"{exc}: {event.data}")
        digest = report.candidate_digest
        if candidate_digest is not None:
            if digest is None and reporter is not None:
                # Every worker that signs its events sends a digest: this one is old, or about
                # an earlier candidate, and cannot be told from a report on this one.
                return self._refuse(
                    "no_digest",
                    f"a signed report on version {report.version} without a candidate digest",
                )
            if digest is not None and digest != candidate_digest:
                return self._refuse(
                    "other_candidate",
                    f"a report on version {report.version} digest {digest}, "
                    f"the candidate's is {candidate_digest}",
                )
            digest = candidate_digest
        key = (report.version, report.served_version, digest, reporter, report.worker)
        previous = self._latest.get(key)
        if previous is None:
            if len(self._latest) >= MAX_REPORTERS:
                return self._refuse("too_many_reporters", f"{MAX_REPORTERS} reporters already")
            if reporter is not None and self._per_key[reporter] >= MAX_REPORTERS_PER_KEY:
                return self._refuse(
                    "too_many_reporters",
                    f"{MAX_REPORTERS_PER_KEY} reporters already under key {reporter}",
                )
            self._per_key[reporter] += 1
        if previous is None or report.totals.records >= previous.records:  # totals only grow
            self._latest[key] = report.totals
        return True

    def totals(
        self, candidate: int, served: int, candidate_digest: str | None = None
    ) -> ShadowTotals:
        """The candidate's totals against the served version, summed over the workers; with
        `candidate_digest`, only those counted for that candidate (`update`)."""
        return ShadowTotals.sum_of(
            t
            for (c, s, d, _, _), t in self._latest.items()
            if c == candidate
            and s == served
            and (candidate_digest is None or d == candidate_digest)
        )

    def forget(self, candidate: int) -> None:
        """Drops the candidate's totals (it was promoted or rejected)."""
        self._latest = {k: v for k, v in self._latest.items() if k[0] != candidate}
        self._per_key = Counter(k[3] for k in self._latest)


class CandidateDigest:
    """The digest (`model_digest`) of the trainer's candidate, computed once per candidate."""

    def __init__(self) -> None:
        self._last: tuple[ModelParams, str] | None = None

    def __call__(self, model: ModelParams) -> str:
        if self._last is None or self._last[0] is not model:
            self._last = (model, model_digest(model))
        return self._last[1]


async def follow_events(
    kafka: KafkaSettings,
    topic: str,
    verifier: EventVerifier | None = None,
    refused: Callable[[str, str], None] | None = None,
) -> AsyncIterator[Received]:
    """The events the trainer may act on (`admit`), from the topic's end on (earlier alarms are
    about earlier moments); refused(reason, detail) hears of every other record."""
    consumer, _ = await assigned_consumer(kafka, topic)
    try:
        await consumer.seek_to_end()
        while True:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    outcome = admit(record.key, record.value, record.headers, verifier)
                    if isinstance(outcome, Refused):
                        if refused is not None:
                            refused(*outcome)
                        else:
                            log.warning("ignoring an event (%s): %s", *outcome)
                    else:
                        yield outcome
    finally:
        await consumer.stop()
