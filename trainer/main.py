"""Assembles the trainer job: settings, metrics endpoint, the Trainer, and its schedule.

`run(settings, once=True)` does one cycle (for cron and tests); otherwise a cycle starts every
GMM_TRAIN_INTERVAL_SECONDS (every GMM_FIRST_MODEL_RETRY_SECONDS while no model exists). A
failing cycle (the broker unreachable, say) is logged, counted and retried after a back-off; the
job does not die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sys
import time

from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from kafka_common.access import Need, check_access
from kafka_common.jax_cache import enable_fit_caches
from kafka_common.params_topic import OpenTransaction, PublishConflict, history_spec, params_spec
from kafka_common.topics import TopicSpec, ensure_topics
from mixture.fit import use_fit_devices
from trainer.cycle import CycleOutcome, Trainer
from trainer.events import RefusalLog, ShadowTally, follow_events
from trainer.metrics import TrainerMetrics
from trainer.reader_pool import ReaderPool
from trainer.settings import TrainerSettings

log = logging.getLogger("trainer")

#: Exit code of `run --once` when the cycle published nothing (a guard rejected the fit).
EXIT_NOT_PUBLISHED = 3


async def _run(settings: TrainerSettings, once: bool) -> int:
    metrics = TrainerMetrics(model=settings.model_name)
    if settings.metrics_port and not once:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    # The run loop keeps the window's reader processes started between cycles.
    pool = (
        ReaderPool(settings.kafka, settings.window_readers)
        if settings.window_readers > 1 and not once
        else None
    )
    trainer = Trainer(settings, metrics, pool)
    specs = [params_spec(settings.params_topic), history_spec(settings.history_topic)]
    if settings.events_topic:
        specs.append(TopicSpec(settings.events_topic, 1))
    await asyncio.wait_for(ensure_topics(settings.kafka, specs), 60)
    await check_access(settings.kafka, access_needs(settings))
    await asyncio.wait_for(trainer.load_current(), 60)
    log.info("%r: starting from version %d", settings.model_name, trainer.version)
    if once:
        outcome = await trainer.cycle()
        print(json.dumps(outcome.summary()), flush=True)
        if trainer.posterior_task is not None:  # published already; the report waits for NUTS
            await trainer.posterior_task
        return 0 if outcome.published else EXIT_NOT_PUBLISHED
    drift = DriftRequests()
    tally = ShadowTally(refused_events(metrics))
    watcher = (
        asyncio.create_task(watch_events(settings, trainer, tally, drift))
        if settings.events_topic
        else None
    )
    try:
        await _cycles(settings, trainer, drift, tally)
    finally:
        if watcher is not None:
            watcher.cancel()
        if pool is not None:
            await pool.close()
    return 0


async def _cycles(
    settings: TrainerSettings, trainer: Trainer, drift: DriftRequests, tally: ShadowTally
) -> None:
    metrics = trainer.metrics
    backoff = 1.0
    while True:
        started = time.monotonic()
        drift.answer()  # this cycle answers every alarm raised so far
        try:
            result: CycleOutcome = await trainer.cycle()
            log.info("cycle: %s", json.dumps(result.summary()))
            backoff = 1.0
        except Exception as exc:  # the broker away, a refused send, a record it cannot use
            metrics.cycle_errors.inc()
            expected = isinstance(
                exc, TimeoutError | KafkaError | OSError | PublishConflict | OpenTransaction
            )
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "cycle failed (%s: %s); retrying in %.0f s",
                type(exc).__name__,
                exc,
                backoff,
                exc_info=not expected,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.interval_seconds)
            continue
        if trainer.readers is not None:  # the next cycle's readers start now, off its read
            await trainer.readers.refill()
        why = await wait_for_next(settings, trainer, result, started, drift, tally)
        log.info("next cycle: %s", why)


def access_needs(settings: TrainerSettings) -> list[Need]:
    """What the broker's ACLs must allow the trainer (docs/security.md); the transactional id
    is checked when it is first used, with a one-line error of its own."""
    needs = [Need("topic", settings.input_topic, "read", "GMM_INPUT_TOPIC")]
    for topic, setting in (
        (settings.params_topic, "GMM_PARAMS_TOPIC"),
        (settings.history_topic, "GMM_HISTORY_TOPIC"),
        (settings.events_topic, "GMM_EVENTS_TOPIC"),
    ):
        if topic:
            needs += [Need("topic", topic, "read", setting), Need("topic", topic, "write", setting)]
    return needs


#: How far a worker's clock may be off the trainer's, either way, for its drift alarms' times to
#: be trusted: an alarm dated more than this before the last cycle started is stale (that cycle
#: answered it), one dated more than this ahead of the trainer's clock is refused (a signed
#: alarm could otherwise be replayed until its time came). A worker's clock further off is a
#: fault to fix (NTP); the refusals say so.
MAX_CLOCK_SKEW_SECONDS = 60.0
#: At most this many accepted alarms are remembered (`DriftRequests`), oldest dropped first.
MAX_REMEMBERED_ALARMS = 10_000


class DriftRequests:
    """The version a drift alarm not yet answered by a cycle was raised about.

    An alarm's time is the worker's clock, so it is judged with MAX_CLOCK_SKEW_SECONDS of
    slack: "stale" only when dated more than that before the last cycle's start (a slow clock
    does not lose the alarms raised just after a cycle started). Within that slack a copy of an
    alarm already taken would pass, and so would a copy of one from a fast clock after the next
    cycle, so the accepted alarms are remembered by who signed them (or, unverified, nobody),
    their time and version, and an exact copy is refused as "duplicate"; an alarm is forgotten
    once it would be stale anyway."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.raised = asyncio.Event()
        #: When the last cycle started (UTC): it answered every alarm raised before.
        self.answered_at: dt.datetime | None = None
        #: The accepted alarms' identities (reporter, time, version), by their time.
        self._accepted: dict[tuple[str | None, dt.datetime, int], dt.datetime] = {}

    def raise_for(
        self, version: int, raised_at: str | None = None, reporter: str | None = None
    ) -> str | None:
        """An alarm about `version`, raised at `raised_at` (the event's ISO-8601 time; None:
        unknown), signed by the worker key `reporter` (None: not verified). Returns None if it
        stands, or why it is ignored: "stale" (raised more than MAX_CLOCK_SKEW_SECONDS before
        the last cycle started, which answered it), "future" (dated more than
        MAX_CLOCK_SKEW_SECONDS ahead) or "duplicate" (the same reporter's alarm of that time
        and version was taken already: a replayed alarm cannot start another refit)."""
        if raised_at is not None:
            at = dt.datetime.fromisoformat(raised_at)
            now = dt.datetime.now(dt.UTC)
            skew = dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)
            if self.answered_at is not None and at < self.answered_at - skew:
                return "stale"
            if at - now > skew:
                return "future"
            identity = (reporter, at, version)
            if identity in self._accepted:
                return "duplicate"
            self._remember(identity, at)
        self.version = version
        self.raised.set()
        return None

    def _remember(self, identity: tuple[str | None, dt.datetime, int], at: dt.datetime) -> None:
        if self.answered_at is not None:  # what is stale now cannot come back: forget it
            oldest = self.answered_at - dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)
            self._accepted = {k: t for k, t in self._accepted.items() if t >= oldest}
        while len(self._accepted) >= MAX_REMEMBERED_ALARMS:
            del self._accepted[min(self._accepted, key=self._accepted.__getitem__)]
        self._accepted[identity] = at

    def answer(self) -> None:
        """A cycle starts: it answers the alarms so far, whatever its outcome (a refit the
        guards reject must not be retried in a loop; the detector alarms again if the data
        keep moving)."""
        self.version = None
        # To the millisecond, as events are stamped (`wire.event.utc_now`): an alarm of the
        # cycle's very millisecond counts as raised after it.
        now = dt.datetime.now(dt.UTC)
        self.answered_at = now.replace(microsecond=now.microsecond // 1000 * 1000)

    def pending_for(self, trainer: Trainer) -> bool:
        """An unanswered alarm about the served version (or a newer one the trainer has not
        read yet: a rollback, a CLI publication)."""
        return self.version is not None and self.version >= trainer.version


def refused_events(metrics: TrainerMetrics) -> RefusalLog:
    """Counts ignored events in gmm_trainer_events_refused_total{reason} and logs them."""
    return RefusalLog(lambda reason: metrics.events_refused.labels(reason=reason).inc())


async def watch_events(
    settings: TrainerSettings, trainer: Trainer, tally: ShadowTally, drift: DriftRequests
) -> None:
    """Feeds the workers' shadow scores to `tally` and their drift alarms to `drift`; with
    GMM_EVENTS_VERIFY_KEY only those signed by a listed worker key (`trainer.events.admit`)."""
    verifier = settings.events_verifier()
    refused = refused_events(trainer.metrics)
    if verifier is not None:
        log.info("acting only on events signed by worker keys %s", ", ".join(verifier.key_ids))
    while True:
        try:
            async for received in follow_events(
                settings.kafka, settings.events_topic, verifier, refused
            ):
                event = received.event
                if event.model != settings.model_name:
                    continue
                candidate = trainer.candidate
                if event.kind == "shadow":
                    if candidate is not None and event.version == candidate.version:
                        digest = trainer.candidate_digest(candidate)
                        tally.update(event, received.reporter, digest)
                elif event.kind == "drift" and event.version >= trainer.version:
                    why = drift.raise_for(event.version, event.time, received.reporter)
                    if why is not None:
                        refused(why, f"a drift alarm on version {event.version} of {event.time}")
                        continue
                    trainer.metrics.drift_alarms.inc()
                    log.warning("drift alarm on version %d: %s", event.version, event.detail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away: follow again
            log.warning("events topic: %s; following again in 1 s", exc)
            await asyncio.sleep(1.0)


async def wait_for_next(
    settings: TrainerSettings,
    trainer: Trainer,
    outcome: CycleOutcome,
    started: float,
    drift: DriftRequests,
    tally: ShadowTally,
) -> str:
    """Waits until the next cycle is due and says why: the interval (or the first-model retry),
    or a drift alarm about the served version, though never sooner than
    GMM_MIN_REFIT_SECONDS after this cycle's start. Meanwhile a candidate in shadow is judged
    every second."""
    due = started + next_cycle_in(settings, trainer, outcome)
    earliest_refit = started + settings.min_refit_seconds
    while True:
        if trainer.candidate is not None:
            try:
                await trainer.judge_candidate(tally)
            except Exception as exc:  # the broker away: judged again in a second
                log.warning("judging the candidate failed (%s: %s)", type(exc).__name__, exc)
        now = time.monotonic()
        alarmed = drift.pending_for(trainer)
        if alarmed and now >= earliest_refit:
            return f"drift alarm on version {drift.version}"
        if now >= due:
            return "interval"
        drift.raised.clear()
        wait = min(1.0, due - now, *([earliest_refit - now] if alarmed else []))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drift.raised.wait(), max(0.01, wait))


def next_cycle_in(settings: TrainerSettings, trainer: Trainer, outcome: CycleOutcome) -> float:
    """Seconds from a cycle's start to the next: the interval, or a short retry while no model
    of the name exists yet (a fresh stack gets its first model in seconds, not minutes)."""
    if trainer.current is None and outcome.published is None:
        return min(settings.first_model_retry_seconds, settings.interval_seconds)
    return settings.interval_seconds


def run(settings: TrainerSettings, once: bool) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    enable_fit_caches(settings.jax_cache_dir)  # before anything is compiled
    use_fit_devices(settings.fit_devices)
    return asyncio.run(_run(settings, once))
