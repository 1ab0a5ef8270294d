"""The model topics' Kafka side: what workers serve, and every version ever published.

The record (key, value, headers, withdrawal markers, decoding) is `wire.params_record`; this
module publishes, follows and reads records of that format.

- The params topic (compacted, key = model name, value = ModelParams JSON) holds the newest
  version of each name. Several names share it; every reader filters on the key, so a worker
  serves only the name it is configured with.
- The history topic (same records, never compacted or expired) keeps every version, for
  `gmm-trainer models` and `gmm-trainer rollback`.
- A candidate in shadow (GMM_PROMOTION=shadow) is a record keyed `<name>@candidate` on the
  params topic (`@` is not allowed in names): workers score it beside the served model without
  serving it. A withdrawal marker on that key (not a tombstone: compaction keeps it, and with
  it the highest version ever taken) withdraws it: when it is promoted or rejected, and with
  every served publication (a rollback or a CLI publication supersedes any candidate).

Publishing is compare-and-set per name. A publisher is a transactional producer whose id is
derived from the name, so at most one publisher of a name is live: starting one fences the
previous one and waits for its open transaction to end. Only then does it read the newest
version (read_committed) and write version + 1 to both topics in one transaction. A publisher
that was fenced in between fails its commit, reads again and retries (a bounded number of
times). Two publishers of one name at once therefore never write the same version, and every
reader reads committed records only.

A commit can fail and still have gone through, or not: Kafka 4.0 answers a commit that races
another publisher's fencing with UNKNOWN_SERVER_ERROR, and a commit fenced after it was logged
completes anyway. Every publication carries a random id (`metadata.publication`); a retry
first looks for it on the history topic, and writes nothing again if an earlier try's commit
went through. So a retry never publishes one model twice. A transaction commits only once
every record in it was delivered (aiokafka would commit without a batch the broker refused).

Names share the params topic, and a read_committed reader sees nothing past the first
transaction still open, whatever its name. A publisher's transactions are short (a few
records) and time out after PUBLISH_TRANSACTION_TIMEOUT_MS, after which the broker aborts
them (it checks every 10 s by default): a publisher that dies mid-transaction holds up other
names' readers for at most about 20 s. A publisher reads the state only once every
transaction open when it started has ended (`settle_s`), so one name's open transaction can
never hide its own newest version from it.

Signed records (`wire.params_record`) are read through a `Verifier` of every key listed while
keys rotate, and in topic order through `NameState`: a replayed old candidate or withdrawal
marker is refused and counted (`replayed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
    UnknownError,
)

from kafka_common.settings import KafkaSettings, SettingsError
from kafka_common.signing import Signer, Verifier
from kafka_common.topics import TopicSpec, assigned_consumer
from mixture.params import ModelParams, ParamsError
from wire import params_record
from wire.params_record import SIGNATURE_HEADER, STAGES, NameState, ParamsUpdate, stamped

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_U = TypeVar("_U")

OnModel = Callable[[ModelParams], Awaitable[object]]
OnReject = Callable[[str, str], None]  # (reason code, message)

#: How often a publisher fenced by a concurrent one of the same name reads again and retries.
PUBLISH_ATTEMPTS = 8

#: The most a fenced publisher waits before its next attempt, whatever its attempts took.
PUBLISH_BACKOFF_CAP_SECONDS = 60.0

#: A publisher's transaction the broker aborts when it is open longer than this (a publisher
#: that died mid-transaction): it holds up every name's read_committed readers until then.
PUBLISH_TRANSACTION_TIMEOUT_MS = 10_000

#: How long a publisher waits for transactions open when it reads the state to end: the
#: transaction timeout, the broker's check for timed-out transactions (10 s by default), and
#: a margin. Past it the publication fails (OpenTransaction) rather than read a stale state.
SETTLE_SECONDS = 45.0
#: How long a command-line publication (`gmm-trainer fit --publish`, `publish`, `rollback`) may
#: take (Publisher.timeout_s): its tries, their backoff, and a look that settles.
COMMAND_PUBLISH_SECONDS = 120.0
#: How long a publisher with a deadline waits for one of its producers to stop.
STOP_SECONDS = 10.0

OnCandidate = Callable[["ModelParams | None"], Awaitable[object]]

#: What a publisher fenced while in its transaction gets: ProducerFenced, or, from aiokafka,
#: IllegalOperation on its next send (its transaction was ended under it).
_FENCED = (ProducerFenced, InvalidProducerEpoch, IllegalOperation)


class UnsignedPublisher(SettingsError):
    """A publisher that reads only signed records (GMM_PARAMS_VERIFY_KEY) but signs nothing
    (no GMM_PARAMS_SIGNING_KEY) would never see its own versions, and number each the same."""


class StaleState(RuntimeError):
    """The served version or the candidate changed since the caller looked: nothing written."""


class OpenTransaction(RuntimeError):
    """A transaction on the params topic stayed open past SETTLE_SECONDS: the state cannot be
    read in full, so nothing was written."""


#: The params topic's min.compaction.lag.ms: no record is compacted away younger than this, so
#: a trainer that runs at least this often re-asserts (`Publisher.reassert`) a name's records
#: before a refused record written after them could become the only one left of its key.
PARAMS_COMPACTION_LAG_MS = 7 * 24 * 3600 * 1000


def params_spec(topic: str) -> TopicSpec:
    """The params topic: one partition (one order of versions), compacted, but never a record
    younger than PARAMS_COMPACTION_LAG_MS."""
    return TopicSpec(topic, 1, compact=True, compaction_lag_ms=PARAMS_COMPACTION_LAG_MS)


def history_spec(topic: str) -> TopicSpec:
    """The history topic: one partition, neither compacted nor expired."""
    return TopicSpec(topic, 1, retain_forever=True)


class PublishConflict(RuntimeError):
    """Every attempt was fenced by another publisher of the same name, or failed in its commit
    with its outcome not known; a look after the last found nothing of them committed (but see
    OutcomeUnknown, a subclass, for when the look could not tell)."""


def fenced_backoff(attempt: int, attempt_seconds: float, rng: random.Random) -> float:
    """Seconds a publisher waits after its fenced attempt number `attempt` (from 1), which took
    `attempt_seconds` from its start to its fencing.

    Exponential backoff with full jitter, uniform in [0, attempt_seconds * 2**attempt]; the
    exponent stops growing at 5, and the window at PUBLISH_BACKOFF_CAP_SECONDS. An attempt
    succeeds only if no other publisher of the name starts while it runs, so the windows are
    sized in attempts, not in fixed seconds: on a loaded host, where reading the state takes
    seconds, fixed sub-second waits kept five racing publishers fencing each other until all
    their attempts were spent.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    window = max(attempt_seconds, 0.05) * 2.0 ** min(attempt, 5)
    return rng.uniform(0.0, min(window, PUBLISH_BACKOFF_CAP_SECONDS))


async def _start_consumer(
    kafka: KafkaSettings, topic: str
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """Every partition of `topic`, from the beginning (the params topic is compacted: one
    record per key, plus the not yet compacted tail), committed records only."""
    consumer, tps = await assigned_consumer(
        kafka, topic, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    try:
        await consumer.seek_to_beginning(*tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


async def _behind(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False


def _update(
    record: Any, name: str, role: str, verifier: Verifier | None, on_reject: OnReject | None
) -> ParamsUpdate | None:
    """What a record says about `name` (`params_record.decode`); None for another name's record
    and for a record refused: unsigned or badly signed when verifying (bad_signature), or
    invalid (its reason). A refusal is logged and reported to on_reject."""
    if params_record.stage_of(record.key, name) is None:
        return None
    if verifier is not None and not verifier.verify_record(
        record.key, record.value, record.headers, role
    ):
        log.warning(
            "ignoring a params record of %r at offset %d: bad or missing signature",
            name,
            record.offset,
        )
        if on_reject is not None:
            on_reject("bad_signature", "the record's signature does not verify")
        return None
    try:
        return params_record.decode(record.key, record.value, name, role)
    except ParamsError as exc:
        log.warning("ignoring invalid parameters record of %r: %s", name, exc)
        if on_reject is not None:
            on_reject(exc.reason, str(exc))
        return None


def _apply(
    state: NameState, update: ParamsUpdate, name: str, offset: int, on_reject: OnReject | None
) -> str:
    """state.apply(update); a replay is logged and reported to on_reject."""
    outcome = state.apply(update)
    if outcome == "replayed":
        what = f"version {update.taken}" if update.taken is not None else "a tombstone"
        log.warning(
            "ignoring %r's %s record at offset %d (%s): versions only increase (newest served "
            "%s, highest taken %d)",
            name,
            update.stage,
            offset,
            what,
            state.newest.version if state.newest is not None else "none",
            state.highest,
        )
        if on_reject is not None:
            on_reject("replayed", f"{update.stage} {what} is older than what was read before")
    return outcome


class ParamsTail(NamedTuple):
    """A name's records read to the end of a topic."""

    state: NameState  # the name's state on the params topic
    history: list[ModelParams]  # on the history topic: every valid version, in topic order
    #: The raw record (key, value, headers) that last set each stage's state ("served",
    #: "candidate"): what `Publisher.reassert` writes again.
    latest: dict[str, Any]
    #: The stages whose key's last record was refused (a replay, a forgery, a tombstone):
    #: compaction keeps only the last record of a key, and would keep that one.
    spoiled: frozenset[str]


async def _read_to_end(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    name: str,
    on_reject: OnReject | None,
    verifier: Verifier | None = None,
    role: str = "params",
    settle_s: float = 0.0,
) -> ParamsTail:
    """Every valid record of `name` up to the current end of each partition, in topic order.

    settle_s > 0: first wait, at most that long, until every transaction open now has ended,
    so nothing committed before one is hidden behind it (OpenTransaction past the limit)."""
    state, history = NameState(), []
    latest: dict[str, Any] = {}
    spoiled: set[str] = set()

    def take(batches: dict[TopicPartition, list[Any]]) -> None:
        for records in batches.values():
            for record in records:
                stage = params_record.stage_of(record.key, name)
                if stage is None:
                    continue
                update = _update(record, name, role, verifier, on_reject)
                if role == "history":
                    if update is not None and update.model is not None:
                        history.append(update.model)
                    continue
                outcome = (
                    "refused"
                    if update is None
                    else _apply(state, update, name, record.offset, on_reject)
                )
                if outcome in ("refused", "replayed"):
                    spoiled.add(stage)
                    continue
                spoiled.discard(stage)
                # A copy of the current record ("unchanged") is not taken for it: its headers
                # are whatever the copier chose.
                if outcome != "unchanged" or stage not in latest:
                    latest[stage] = record

    ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
    targets = await _open_ends(consumer, tps, ends, take, settle_s) if settle_s > 0 else ends
    while await _behind(consumer, tps, targets):
        take(await consumer.getmany(timeout_ms=1000))
    return ParamsTail(state, history, latest, frozenset(spoiled))


async def _open_ends(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    ends: dict[TopicPartition, int],
    take: Callable[[dict[TopicPartition, list[Any]]], None],
    settle_s: float,
) -> dict[TopicPartition, int]:
    """The high watermarks now (learnt from a fetch), once the last stable offsets have
    reached them: every transaction open now has then ended. Reads (`take`) as it goes."""
    deadline = time.monotonic() + settle_s
    highs: dict[TopicPartition, int] = {}
    while True:
        for tp in tps:
            if tp not in highs and consumer.highwater(tp) is not None:
                highs[tp] = consumer.highwater(tp)
        if len(highs) == len(tps) and all(ends[tp] >= highs[tp] for tp in tps):
            return highs
        if time.monotonic() > deadline:
            raise OpenTransaction(
                f"a transaction on {tps[0].topic!r} stayed open over {settle_s:.0f} s "
                f"(committed end {dict((tp.partition, ends[tp]) for tp in tps)}, high "
                f"watermark {dict((tp.partition, h) for tp, h in highs.items())})"
            )
        take(await consumer.getmany(timeout_ms=200))  # a fetch tells the high watermark
        ends = await consumer.end_offsets(tps)


async def read_all(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    on_reject: OnReject | None = None,
    verifier: Verifier | None = None,
    role: str = "history",
    settle_s: float = 0.0,
) -> list[ModelParams]:
    """Every valid model of `name` on `topic`, in topic order: on the history topic (role
    "history") every version published; on the params topic the served versions not yet
    compacted away. settle_s: see `_read_to_end`."""
    consumer, tps = await _start_consumer(kafka, topic)
    try:
        tail = await _read_to_end(consumer, tps, name, on_reject, verifier, role, settle_s)
    finally:
        await consumer.stop()
    return tail.history if role == "history" else tail.state.served


async def read_tail(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    verifier: Verifier | None = None,
    settle_s: float = 0.0,
) -> ParamsTail:
    """The name's state on the params topic, and which of its keys end in a refused record.
    settle_s: see `_read_to_end` (publishers settle; a lister need not)."""
    consumer, tps = await _start_consumer(kafka, topic)
    try:
        return await _read_to_end(consumer, tps, name, None, verifier, "params", settle_s)
    finally:
        await consumer.stop()


async def read_state(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    verifier: Verifier | None = None,
    settle_s: float = 0.0,
) -> tuple[ModelParams | None, ModelParams | None, int]:
    """(newest served model, candidate in shadow, highest version of either ever taken) on the
    params topic. settle_s: see `_read_to_end` (publishers settle; a lister need not)."""
    state = (await read_tail(kafka, topic, name, verifier, settle_s)).state
    return state.newest, state.candidate, state.highest


async def read_newest(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    on_reject: OnReject | None = None,
    verifier: Verifier | None = None,
    role: str = "params",
) -> ModelParams | None:
    """The newest valid model of `name` on `topic` (highest version), or None."""
    models = await read_all(kafka, topic, name, on_reject, verifier, role)
    return max(models, key=lambda m: m.version, default=None)


async def follow(
    kafka: KafkaSettings,
    topic: str,
    name: str,
    on_model: OnModel,
    on_reject: OnReject | None = None,
    stop: asyncio.Event | None = None,
    on_candidate: OnCandidate | None = None,
    verifier: Verifier | None = None,
    on_reject_catching_up: OnReject | None = None,
) -> None:
    """Calls on_model for each valid model of `name`: first the newest existing one, then each
    newer one. Versions not above the newest seen are skipped (versions only increase).

    on_candidate, if given, is called with the name's candidate in shadow whenever it changes
    (None: withdrawn), starting with the current one (or None).
    verifier: if given, only records whose signature verifies are used (others: bad_signature).
    on_reject_catching_up, if given, hears the refusals of the first read to the end instead
    of on_reject: records refused before (by this process or another), read again, which an
    alert on new refusals must not count.
    """
    consumer, tps = await _start_consumer(kafka, topic)
    try:
        # Catch up first, so a worker starts with the newest model rather than replaying.
        catching_up = on_reject if on_reject_catching_up is None else on_reject_catching_up
        state = (await _read_to_end(consumer, tps, name, catching_up, verifier)).state
        if state.newest is not None:
            await on_model(state.newest)
        if on_candidate is not None:
            await on_candidate(state.candidate)
        while stop is None or not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    update = _update(record, name, "params", verifier, on_reject)
                    if update is None:
                        continue
                    outcome = _apply(state, update, name, record.offset, on_reject)
                    if outcome == "served":
                        assert state.newest is not None
                        await on_model(state.newest)
                    elif outcome in ("candidate", "withdrawn") and on_candidate is not None:
                        await on_candidate(state.candidate)  # None: withdrawn
    finally:
        await consumer.stop()


class PublisherSettings(Protocol):
    """What a publisher is built from (`trainer.settings.TrainerSettings`)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def params_topic(self) -> str: ...
    @property
    def history_topic(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    def signer(self) -> Signer | None: ...
    def verifier(self) -> Verifier | None: ...


@dataclasses.dataclass(frozen=True)
class Publisher:
    """Publishes versions of one model name, compare-and-set (see the module's docstring)."""

    kafka: KafkaSettings
    params_topic: str
    history_topic: str
    name: str
    attempts: int = PUBLISH_ATTEMPTS
    #: Signs every record written (GMM_PARAMS_SIGNING_KEY), and then reads only records that
    #: verify under its own public key or one of `verify_keys`: a forged record cannot move
    #: the numbering or the expectations of a promotion.
    signer: Signer | None = None
    #: The other keys whose records it reads (GMM_PARAMS_VERIFY_KEY: while keys rotate, the
    #: key that signed the versions before). With no signer, these alone.
    verify_keys: Verifier | None = None
    #: The most seconds one call may take, its tries, looks and waits together (None: no
    #: limit). Past it the call ends with PublishTimedOut when no try had reached its commit
    #: (nothing was committed), else with OutcomeUnknown: a caller's own timeout around the
    #: call could not tell the two apart.
    timeout_s: float | None = None

    @classmethod
    def from_settings(
        cls, settings: PublisherSettings, name: str | None = None, **options: Any
    ) -> Publisher:
        """The publisher of model name `name` (default: settings.model_name) on the settings'
        params and history topics, signing with the settings' signer (GMM_PARAMS_SIGNING_KEY)
        and reading with its verifier (GMM_PARAMS_VERIFY_KEY). options: the other fields."""
        return cls(
            settings.kafka,
            settings.params_topic,
            settings.history_topic,
            settings.model_name if name is None else name,
            signer=settings.signer(),
            verify_keys=settings.verifier(),
            **options,
        )

    @property
    def verifier(self) -> Verifier | None:
        """Verifies records under the signer's own public key and `verify_keys` (None: neither
        is set, and every record is read)."""
        if self.signer is None:
            return self.verify_keys
        return Verifier((self.signer.key.public_key(),)).including(self.verify_keys)

    @property
    def transactional_id(self) -> str:
        return f"gmm-params-publisher-{self.name}"

    async def publish(
        self,
        model: ModelParams,
        published_by: str,
        stage: str = "served",
        expect: tuple[int, int | None] | None = None,
        **extra: object,
    ) -> ModelParams:
        """Publishes `model` as the next version of the name; returns it as published.

        stage: "served" (workers serve it; any candidate is withdrawn in the same transaction)
        or "candidate" (workers score it in shadow). Versions are shared by both stages.
        expect: (served version, candidate version or None) that must still hold, read after
        the fencing, or StaleState is raised and nothing written (a promotion must not undo a
        rollback, nor be repeated).
        Raises PublishConflict if concurrent publishers fenced every attempt (nothing of this
        call was committed then), and Kafka's errors if the broker refuses.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        # Names this call's record: a retry after a commit whose outcome was not known finds
        # by it whether that commit went through, and then writes nothing again.
        publication = uuid.uuid4().hex
        model = stamped(
            model, self.name, published_by, stage=stage, publication=publication, **extra
        )

        async def look() -> tuple[ModelParams] | None:
            done = await self._published(publication)
            return None if done is None else (done,)

        async def attempt(producer: _Producer) -> ModelParams:
            served, candidate, highest = await read_state(
                self.kafka, self.params_topic, self.name, self.verifier, SETTLE_SECONDS
            )
            now = (served.version if served else 0, candidate.version if candidate else None)
            if expect is not None and now != expect:
                raise StaleState(
                    f"{self.name!r}: served and candidate versions are {now}, not {expect}"
                )
            versioned = model.with_version(highest + 1)
            record = params_record.encode(versioned, self.name, stage, self.signer)
            kept = params_record.encode(versioned, self.name, stage, self.signer, "history")
            async with producer.transaction():
                await producer.send(
                    self.history_topic, kept.value, key=kept.key, headers=kept.headers
                )
                await producer.send(
                    self.params_topic, record.value, key=record.key, headers=record.headers
                )
                if stage == "served" and candidate is not None:
                    await self._send_withdrawal(producer, versioned.version)
            return versioned

        try:
            return await self._exclusively("publishing", attempt, look)
        except OutcomeUnknown as exc:
            exc.args = (f"{exc.args[0]} (its publication id: {publication})",)
            raise

    async def reassert(self) -> bool:
        """Writes the name's current records again (the newest served version, the candidate
        or its withdrawal marker, exactly as they were signed) when the last record of one of
        its keys is one readers refuse: a replay, a forgery, a tombstone. Compaction keeps only
        a key's last record; without this it would one day keep the refused one, and a reader
        starting afresh would serve an old version or lose track of the numbering. Readers
        take the copies as unchanged. True if it wrote. The trainer calls it every cycle."""
        tail = await read_tail(self.kafka, self.params_topic, self.name, self.verifier)
        if not tail.spoiled & tail.latest.keys():
            return False

        # Needs no look: a retry reads the tail again, and writes only what is still spoiled.
        async def attempt(producer: _Producer) -> bool:
            tail = await read_tail(
                self.kafka, self.params_topic, self.name, self.verifier, SETTLE_SECONDS
            )
            stages = sorted(tail.spoiled & tail.latest.keys())
            if not stages:
                return False
            async with producer.transaction():
                for stage in stages:
                    record = tail.latest[stage]
                    # The key, the value and the signature only: nothing else a copier added.
                    signature = params_record.signature_of(record.headers)
                    headers = None if signature is None else [(SIGNATURE_HEADER, signature)]
                    await producer.send(
                        self.params_topic, record.value, key=record.key, headers=headers
                    )
            log.warning(
                "%r: the last record of its %s key(s) was refused (replayed or forged); its "
                "current records were written again",
                self.name,
                " and ".join(stages),
            )
            return True

        return await self._exclusively("re-asserting", attempt)

    async def withdraw_candidate(self, version: int) -> None:
        """Withdraws candidate `version` (workers stop scoring it); StaleState if it is not the
        candidate any more."""

        async def look() -> tuple[None] | None:
            # Out of shadow: an earlier attempt's withdrawal went through, or another
            # publisher's withdrawal or promotion did; either way it is no longer scored.
            _, candidate, _ = await read_state(
                self.kafka, self.params_topic, self.name, self.verifier, SETTLE_SECONDS
            )
            return (None,) if candidate is None or candidate.version != version else None

        async def attempt(producer: _Producer) -> None:
            _, candidate, highest = await read_state(
                self.kafka, self.params_topic, self.name, self.verifier, SETTLE_SECONDS
            )
            if candidate is None or candidate.version != version:
                raise StaleState(f"{self.name!r}: candidate {version} is not in shadow any more")
            async with producer.transaction():
                await self._send_withdrawal(producer, highest)

        await self._exclusively("withdrawing the candidate of", attempt, look)

    async def _published(self, publication: str) -> ModelParams | None:
        """The version this publisher wrote under `publication` (its record's id), if any: read
        on the history topic, which keeps every version (the params topic compacts), once
        every transaction open now has ended."""
        history = await read_all(
            self.kafka,
            self.history_topic,
            self.name,
            verifier=self.verifier,
            settle_s=SETTLE_SECONDS,
        )
        return next(
            (m for m in history if m.metadata.extra.get("publication") == publication), None
        )

    async def _send_withdrawal(self, producer: _Producer, version: int) -> None:
        """Writes the withdrawal marker (with `version`, the highest taken) on the candidate key,
        inside the caller's transaction."""
        record = params_record.encode_withdrawal(self.name, version, self.signer)
        await producer.send(self.params_topic, record.value, key=record.key, headers=record.headers)

    async def _exclusively(
        self,
        what: str,
        attempt: Callable[[_Producer], Awaitable[_T]],
        look: Callable[[], Awaitable[tuple[_T] | None]] | None = None,
    ) -> _T:
        """Runs `attempt` with a started transactional producer of the name, and again after
        each try that was fenced, or whose commit failed with its outcome not known
        (`outcome_unknown`), at most self.attempts times in all, waiting fenced_backoff between
        tries; PublishConflict when every try failed so and nothing was committed. Any other
        error ends it at once.

        A try that reached its commit and failed may still have committed: a commit the broker
        answered with an unexpected error, or one fenced after it was logged. So after such a
        try, before the next one (and once more after the last), `look()` says whether what
        the tries were to write is there (`(result,)`) or not (None); if it is, nothing is
        written again. Starting a producer of the name ends every earlier try's transaction,
        one way or the other, so the look comes after that. With no `look`, `attempt` must be
        idempotent. An error while a commit's outcome is not known yet (the look's, a
        producer's start) raises OutcomeUnknown."""
        if self.signer is None and self.verify_keys is not None:
            raise UnsignedPublisher(
                f"{what} {self.name!r} needs GMM_PARAMS_SIGNING_KEY: with GMM_PARAMS_VERIFY_KEY "
                "set and no signing key, the publisher would not see its own versions"
            )
        rng = random.Random()
        maybe_committed = False  # a failed try reached its commit, and no look has run since
        # A try reached its commit and no look has said it did not commit (with no look, never
        # cleared): past the deadline, nothing can be said to be unpublished.
        in_doubt = False
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s

        async def bounded(step: Awaitable[_U]) -> _U:
            """The step, or TimeoutError at the deadline. The step is cancelled then but not
            waited for: a try cancelled before its commit aborts its transaction, and the
            abort waits on the broker for as long as it does not answer (the start of the next
            producer of the name, or the broker's transaction timeout, ends it anyway)."""
            if deadline is None:
                return await step
            task = asyncio.ensure_future(step)
            try:
                done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            except BaseException:
                task.cancel()
                raise
            if not done:
                task.cancel()
                # Its end (an error, or the cancellation) is taken, so that nothing is logged.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                raise TimeoutError
            return task.result()

        for number in range(1, self.attempts + 2):
            began = time.monotonic()
            producer = AIOKafkaProducer(
                **self.kafka.producer_options(),
                transactional_id=self.transactional_id,
                transaction_timeout_ms=PUBLISH_TRANSACTION_TIMEOUT_MS,
                enable_idempotence=True,
                acks="all",
            )
            writer = _Producer(producer)
            try:
                # start() initialises the transactions: it fences any other live publisher of
                # this name and waits for its open transaction to be committed or aborted.
                await bounded(producer.start())
                if maybe_committed and look is not None:
                    done = await bounded(look())
                    if done is not None:
                        log.warning("%s %r: an earlier attempt had committed", what, self.name)
                        return done[0]
                    maybe_committed = in_doubt = False
                if number > self.attempts:
                    break
                return await bounded(attempt(writer))
            except TimeoutError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    if in_doubt or writer.started_commit:
                        raise OutcomeUnknown(
                            f"{what} {self.name!r}", exc, f"not done within {self.timeout_s:g} s"
                        ) from exc
                    raise PublishTimedOut(
                        f"{what} {self.name!r}: not done within {self.timeout_s:g} s, and no "
                        "attempt had reached its commit: nothing was committed"
                    ) from exc
                # A timeout of Kafka's own.
                if maybe_committed or writer.started_commit:
                    raise OutcomeUnknown(f"{what} {self.name!r}", exc) from exc
                raise TimeoutError(
                    f"{what} {self.name!r}: Kafka did not answer in time ({exc or 'no detail'}); "
                    "nothing was committed"
                ) from exc
            except (*_FENCED, KafkaError) as exc:
                fenced = isinstance(exc, _FENCED)
                if not writer.started_commit or not (fenced or outcome_unknown(exc)):
                    if maybe_committed:
                        raise OutcomeUnknown(f"{what} {self.name!r}", exc) from exc
                    if not fenced:
                        raise
                # With no look, `attempt` is idempotent: whatever an earlier try did, the next
                # one reads it first.
                maybe_committed = look is not None and (maybe_committed or writer.started_commit)
                in_doubt = in_doubt or writer.started_commit
                wait = fenced_backoff(number, time.monotonic() - began, rng)
                log.warning(
                    "%s %r: %s (%s); attempt %d of %d%s",
                    what,
                    self.name,
                    "fenced by another publisher" if fenced else "commit's outcome not known",
                    _describe(exc),
                    number,
                    self.attempts,
                    f", next in {wait:.2f} s" if number < self.attempts else "",
                )
            except Exception as exc:
                if maybe_committed:
                    raise OutcomeUnknown(f"{what} {self.name!r}", exc) from exc
                raise
            finally:
                if deadline is None:
                    await producer.stop()
                else:  # a producer whose broker stopped answering may never finish stopping
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(producer.stop(), STOP_SECONDS)
            if number < self.attempts:
                # Past the deadline, the next step's bound ends the call.
                left = math.inf if deadline is None else deadline - time.monotonic()
                await asyncio.sleep(max(0.0, min(wait, left)))
            elif look is None or not maybe_committed:
                break
        raise PublishConflict(
            f"{self.attempts} attempts at {what} {self.name!r} were fenced by other publishers "
            "or failed in their commits, and none of them committed"
        )


class _Producer:
    """The transactional producer a try writes with. Its transaction waits for every record's
    delivery before it commits: aiokafka commits a transaction one of whose batches failed for
    good (a record too large for one topic), without that batch. And it tells whether the try
    reached its commit (`started_commit`): only then can a failed try have committed."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.sent: list[asyncio.Future[Any]] = []
        self.started_commit = False

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> None:
        """Queues a record in the transaction; the transaction's end waits for its delivery."""
        self.sent.append(await self.producer.send(topic, value, key=key, headers=headers))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """The producer's transaction: committed when the block ends and every record sent in
        it was delivered, aborted when the block or a delivery raises."""
        async with self.producer.transaction():
            yield
            await asyncio.gather(*self.sent)
            self.started_commit = True


class PublishTimedOut(PublishConflict):
    """The call ran out of its time (Publisher.timeout_s) before any try reached its commit:
    nothing of it was committed, and trying again is safe."""


class OutcomeUnknown(PublishConflict):
    """A try's commit failed with its outcome not known, and what came after (a producer's
    start, the look for what it wrote) failed too, or the call's time ran out meanwhile: it may
    or may not have been published. Its `metadata.publication` on the history topic says
    (`gmm-trainer models --json`); `publish` names it in the message."""

    def __init__(self, what: str, cause: BaseException, detail: str | None = None) -> None:
        super().__init__(
            f"{what}: a commit failed or went unanswered and it could not be told whether it "
            f"went through ({detail or _describe(cause)}); look at the history before trying "
            "again"
        )


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a transaction that raised `exc` may or may not have committed, so that trying
    again (after looking) is right: the broker's UNKNOWN_SERVER_ERROR (which Kafka 4.0 gives a
    commit that races another publisher's fencing), a request timeout, or an error Kafka calls
    retriable, found anywhere in the chain of causes (aiokafka wraps its sender's errors in a
    plain KafkaError). A refusal (authorization, a record too large, an invalid request) is
    not: it ends the publication."""
    return any(
        isinstance(e, (UnknownError, KafkaTimeoutError))
        or (isinstance(e, KafkaError) and e.retriable)
        for e in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then the exception it was raised from, and so on."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__


def _describe(exc: BaseException) -> str:
    """The exception and the causes it wraps, by class name: 'KafkaError <- UnknownError'."""
    return " <- ".join(type(e).__name__ for e in _causes(exc))
