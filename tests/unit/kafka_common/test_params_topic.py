"""Decoding params-topic records: whatever a record holds, the reader skips it or loads it, and
never raises (one poisoned record would stop every reader of the topic at the same offset).
And the publisher's retry: bounded, backing off, only after a fenced try or one whose outcome
is not known, and never writing again what an earlier try committed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from types import SimpleNamespace
from typing import ClassVar

import pytest
from aiokafka.errors import (
    IllegalOperation,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotCoordinatorError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    UnknownError,
)
from numpy.testing import assert_allclose

from kafka_common import params_topic
from kafka_common.params_topic import (
    PUBLISH_BACKOFF_CAP_SECONDS,
    OpenTransaction,
    OutcomeUnknown,
    PublishConflict,
    Publisher,
    PublishTimedOut,
    StaleState,
    _update,
    fenced_backoff,
    outcome_unknown,
)
from kafka_common.settings import KafkaSettings
from kafka_common.signing import keygen
from mixture.params import ModelParams
from trainer.settings import TrainerSettings
from wire.params_record import WITHDRAWN_SCHEMA, withdrawn_version

GOOD = {"schema": "gmm-params/1", "version": 3, "weights": [1.0], "locs": [0.0], "scale": 1.0}


@pytest.mark.parametrize(
    "value",
    [
        b'{"schema": "gmm-params/1", "version": 1, "weights": [1' + b"0" * 400 + b'], "locs": '
        b'[0.0], "scale": 1.0}',
        b'{"weights": ' + b"[" * 50000 + b"]" * 50000 + b"}",
        b"[1, 2, 3]",
        b"\xff\xfe\x00",
        b'{"schema": "gmm-params/1", "version": 1, "weights": [true], "locs": [0], "scale": 1}',
    ],
    ids=["huge-integer", "deep-nesting", "not-an-object", "not-utf8", "boolean-weight"],
)
def test_a_poisoned_record_is_skipped_and_reported(value):
    rejected = []
    record = SimpleNamespace(key=b"gmm", value=value, offset=0)
    update = _update(record, "gmm", "params", None, lambda reason, why: rejected.append(reason))
    assert update is None
    assert len(rejected) == 1


def test_a_valid_record_loads():
    record = SimpleNamespace(key=b"gmm", value=json.dumps(GOOD).encode(), offset=0)
    update = _update(record, "gmm", "params", None, None)
    assert update is not None and update.model is not None and update.model.version == 3


@pytest.mark.parametrize(
    ("value", "version"),
    [
        (json.dumps({"schema": WITHDRAWN_SCHEMA, "version": 4}).encode(), 4),
        (json.dumps([WITHDRAWN_SCHEMA]).encode(), None),
        (json.dumps(WITHDRAWN_SCHEMA).encode(), None),
        (b'{"x": "' + WITHDRAWN_SCHEMA.encode() + b'", "y": ' + b"[" * 50000, None),
        (None, None),
    ],
    ids=["marker", "list", "string", "deep", "tombstone"],
)
def test_withdrawal_markers_are_recognised_or_ignored(value, version):
    assert withdrawn_version(value) == version


def test_fenced_backoff_grows_with_attempts_and_their_duration():
    rng = random.Random(7)
    for attempt in range(1, 9):
        for took in (0.0, 0.3, 2.0, 40.0):
            waits = [fenced_backoff(attempt, took, rng) for _ in range(200)]
            window = min(max(took, 0.05) * 2 ** min(attempt, 5), PUBLISH_BACKOFF_CAP_SECONDS)
            assert min(waits) >= 0.0 and max(waits) <= window
            assert max(waits) > 0.8 * window  # full jitter: the whole window is used
    # Scale-free: a slow host waits in proportion to its slower attempts.
    slow, fast = (fenced_backoff(3, took, random.Random(1)) for took in (2.0, 0.2))
    assert_allclose(slow, 10 * fast)
    with pytest.raises(ValueError, match="from 1"):
        fenced_backoff(0, 1.0, rng)


class _FakeProducer:
    """Stands in for the transactional producer: records its starts and stops."""

    log: ClassVar[list[str]] = []

    def __init__(self, **options: object) -> None:
        assert options["transactional_id"] == "gmm-params-publisher-gmm"

    async def start(self) -> None:
        self.log.append("start")

    async def stop(self) -> None:
        self.log.append("stop")


@pytest.fixture
def fake_kafka(monkeypatch):
    _FakeProducer.log = []
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(params_topic, "AIOKafkaProducer", _FakeProducer)
    monkeypatch.setattr(params_topic.asyncio, "sleep", sleep)
    return waits


def _publisher(attempts: int = 4) -> Publisher:
    settings = TrainerSettings(params_topic="params", history_topic="history", model_name="gmm")
    return Publisher.from_settings(settings, attempts=attempts)


def test_a_publisher_is_built_from_the_settings(tmp_path):
    settings = TrainerSettings(
        kafka=KafkaSettings(bootstrap_servers="b:9092"),
        params_topic="p",
        history_topic="h",
        model_name="gmm",
    )
    publisher = Publisher.from_settings(settings)
    assert (publisher.params_topic, publisher.history_topic, publisher.name) == ("p", "h", "gmm")
    assert publisher.kafka == settings.kafka and publisher.signer is None
    assert publisher.verifier is None
    other = Publisher.from_settings(settings, "other", attempts=2)
    assert (other.name, other.attempts, other.params_topic) == ("other", 2, "p")
    private, _, key_id = keygen(tmp_path / "keys")
    signed = Publisher.from_settings(dataclasses.replace(settings, params_signing_key=str(private)))
    assert signed.signer is not None and signed.signer.key_id == key_id
    assert signed.verifier is not None and signed.verifier.key_ids == [key_id]
    # While keys rotate: its own key and the listed ones (the retired key's), once each.
    _, old_public, old_id = keygen(tmp_path / "old")
    rotating = Publisher.from_settings(
        dataclasses.replace(
            settings, params_signing_key=str(private), params_verify_key=f"{old_public}"
        )
    )
    assert rotating.verifier is not None and rotating.verifier.key_ids == [key_id, old_id]
    listed = Publisher.from_settings(
        dataclasses.replace(settings, params_verify_key=str(old_public))
    )
    assert listed.signer is None and listed.verifier is not None
    assert listed.verifier.key_ids == [old_id]


def test_a_fenced_attempt_is_retried_on_a_new_producer_after_a_backoff(fake_kafka):
    outcomes = [ProducerFenced(), IllegalOperation(), "done"]

    async def attempt(producer):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert asyncio.run(_publisher()._exclusively("publishing", attempt)) == "done"
    assert _FakeProducer.log == ["start", "stop"] * 3  # each stopped before the next starts
    assert len(fake_kafka) == 2


def test_retries_are_bounded_and_end_in_publish_conflict(fake_kafka):
    async def attempt(producer):
        raise ProducerFenced()

    with pytest.raises(PublishConflict, match="4 attempts"):
        asyncio.run(_publisher(4)._exclusively("publishing", attempt))
    assert _FakeProducer.log == ["start", "stop"] * 4
    assert len(fake_kafka) == 3  # no wait after the last attempt


@pytest.mark.parametrize("error", [StaleState("moved"), TimeoutError(), KafkaError()])
def test_any_other_error_ends_at_once_with_the_producer_stopped(fake_kafka, error):
    async def attempt(producer):
        raise error

    with pytest.raises(type(error)):
        asyncio.run(_publisher()._exclusively("publishing", attempt))
    assert _FakeProducer.log == ["start", "stop"]
    assert fake_kafka == []


def test_a_publisher_that_verifies_but_does_not_sign_refuses_to_publish(fake_kafka, tmp_path):
    """It would read past its own unsigned versions and number every one the same."""
    from kafka_common.params_topic import UnsignedPublisher
    from kafka_common.settings import SettingsError

    _, public, _ = keygen(tmp_path / "keys")
    settings = TrainerSettings(
        params_topic="p", history_topic="h", model_name="gmm", params_verify_key=str(public)
    )
    publisher = Publisher.from_settings(settings)
    with pytest.raises(UnsignedPublisher, match="GMM_PARAMS_SIGNING_KEY") as info:
        asyncio.run(publisher._exclusively("publishing", lambda producer: asyncio.sleep(0)))
    assert isinstance(info.value, SettingsError)
    assert _FakeProducer.log == []  # no producer was even started


def _sender_error(cause: Exception) -> KafkaError:
    """What aiokafka raises from a commit whose request failed: its sender's error, wrapping
    the broker's."""
    try:
        raise KafkaError("Unexpected error during batch delivery") from cause
    except KafkaError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (_sender_error(UnknownError()), True),  # Kafka 4.0: a commit racing a fencing
        (UnknownError(), True),
        (KafkaTimeoutError(), True),
        (_sender_error(NotCoordinatorError()), True),  # retriable
        (KafkaError(), False),
        (_sender_error(TopicAuthorizationFailedError()), False),
        (MessageSizeTooLargeError(), False),
        (ValueError(), False),
    ],
    ids=[
        "wrapped-unknown",
        "unknown",
        "timeout",
        "retriable",
        "plain",
        "refused",
        "too-large",
        "not-kafka",
    ],
)
def test_which_errors_leave_the_outcome_unknown(error, unknown):
    assert outcome_unknown(error) is unknown


def _at_commit(producer, error: Exception) -> Exception:
    """`error`, as raised by the try's commit (the try reached it: it may have committed)."""
    producer.started_commit = True
    return error


def test_after_an_unknown_outcome_the_retry_looks_first_and_writes_nothing_again(fake_kafka):
    """The failed commit had gone through: the look finds it, and no second try is made."""
    tries, looks = [], []

    async def attempt(producer):
        tries.append(producer)
        raise _at_commit(producer, _sender_error(UnknownError()))

    async def look():
        looks.append(len(tries))
        return ("version 1",)

    assert asyncio.run(_publisher()._exclusively("publishing", attempt, look)) == "version 1"
    assert len(tries) == 1 and looks == [1]
    assert _FakeProducer.log == ["start", "stop"] * 2  # the look runs on a started producer
    assert len(fake_kafka) == 1


def test_after_a_failed_commit_that_did_not_commit_the_retry_writes(fake_kafka):
    """A look after each try that reached its commit (unknown error, fenced there), none after
    a try fenced before it."""
    outcomes = ["unknown at commit", "fenced before", "fenced at commit", "done"]
    looks = []

    async def attempt(producer):
        outcome = outcomes.pop(0)
        if outcome == "unknown at commit":
            raise _at_commit(producer, _sender_error(UnknownError()))
        if outcome == "fenced at commit":
            raise _at_commit(producer, ProducerFenced())
        if outcome == "fenced before":
            raise ProducerFenced()
        return outcome

    async def look():
        looks.append(outcomes[0])
        return None

    assert asyncio.run(_publisher()._exclusively("publishing", attempt, look)) == "done"
    assert looks == ["fenced before", "done"]
    assert _FakeProducer.log == ["start", "stop"] * 4


@pytest.mark.parametrize("committed", [True, False])
def test_the_last_tries_outcome_is_looked_at_too(fake_kafka, committed):
    """Every try failed so: one more look, after a producer start has ended the last try's
    transaction; only if nothing was committed is it a PublishConflict."""
    seen = []

    async def attempt(producer):
        raise _at_commit(producer, _sender_error(UnknownError()))

    async def look():
        seen.append(True)
        return ("committed",) if committed and len(seen) == 3 else None

    publisher = _publisher(3)
    if committed:
        assert asyncio.run(publisher._exclusively("publishing", attempt, look)) == "committed"
    else:
        with pytest.raises(PublishConflict, match="none of them committed") as info:
            asyncio.run(publisher._exclusively("publishing", attempt, look))
        assert not isinstance(info.value, OutcomeUnknown)
    assert len(seen) == 3  # before the second and third tries, and after the third
    assert _FakeProducer.log == ["start", "stop"] * 4
    assert len(fake_kafka) == 2  # no wait before the last look


def test_an_unknown_error_before_the_commit_ends_at_once(fake_kafka):
    """Nothing was committed (a send timed out): no look, no retry."""

    async def attempt(producer):
        raise KafkaTimeoutError()

    async def look():
        raise AssertionError("nothing to look for")

    with pytest.raises(KafkaTimeoutError):
        asyncio.run(_publisher()._exclusively("publishing", attempt, look))
    assert _FakeProducer.log == ["start", "stop"]


@pytest.mark.parametrize("fails", ["look", "start"])
def test_a_failure_while_a_commit_is_in_doubt_says_so(fake_kafka, monkeypatch, fails):
    """The look (or the producer's start before it) fails after a commit failed: it cannot be
    told whether that commit went through, and the error says so (a subclass of
    PublishConflict, which callers report)."""
    starts = []

    async def start(self):
        starts.append(True)
        if fails == "start" and len(starts) == 2:
            raise KafkaConnectionError()
        _FakeProducer.log.append("start")

    monkeypatch.setattr(_FakeProducer, "start", start)

    async def attempt(producer):
        raise _at_commit(producer, _sender_error(UnknownError()))

    async def look():
        raise OpenTransaction("stayed open")

    with pytest.raises(OutcomeUnknown, match="could not be told") as info:
        asyncio.run(_publisher()._exclusively("publishing", attempt, look))
    assert isinstance(info.value, PublishConflict)
    assert len(starts) == 2 and _FakeProducer.log[-1] == "stop"


def test_with_no_look_a_failed_commit_is_simply_retried(fake_kafka):
    """An idempotent attempt (re-asserting) reads again on its next try."""
    outcomes = [ProducerFenced(), True]

    async def attempt(producer):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise _at_commit(producer, outcome)
        return outcome

    assert asyncio.run(_publisher()._exclusively("re-asserting", attempt)) is True
    assert _FakeProducer.log == ["start", "stop"] * 2


def test_a_refusal_ends_at_once_without_a_look(fake_kafka):
    async def attempt(producer):
        raise _at_commit(producer, _sender_error(TopicAuthorizationFailedError()))

    async def look():
        raise AssertionError("no look after a refusal")

    with pytest.raises(KafkaError):
        asyncio.run(_publisher()._exclusively("publishing", attempt, look))
    assert _FakeProducer.log == ["start", "stop"]


def _publisher_within(seconds: float) -> Publisher:
    settings = TrainerSettings(params_topic="params", history_topic="history", model_name="gmm")
    return Publisher.from_settings(settings, attempts=4, timeout_s=seconds)


async def _never() -> None:
    """A broker that never answers."""
    await asyncio.Event().wait()


def test_out_of_time_before_any_commit_nothing_was_published(fake_kafka):
    """The call's own bound, not a caller's: it knows no try reached its commit."""

    async def attempt(producer):
        await _never()

    with pytest.raises(PublishTimedOut, match="nothing was committed") as info:
        asyncio.run(_publisher_within(0.05)._exclusively("publishing", attempt))
    assert not isinstance(info.value, OutcomeUnknown)
    assert _FakeProducer.log == ["start", "stop"]


def test_out_of_time_with_a_commit_unanswered_the_outcome_is_unknown(fake_kafka):
    async def attempt(producer):
        producer.started_commit = True
        await _never()

    with pytest.raises(OutcomeUnknown, match=r"not done within 0\.05 s"):
        asyncio.run(_publisher_within(0.05)._exclusively("publishing", attempt))
    assert _FakeProducer.log == ["start", "stop"]


def test_out_of_time_while_looking_after_a_failed_commit_the_outcome_is_unknown(fake_kafka):
    async def attempt(producer):
        raise _at_commit(producer, _sender_error(UnknownError()))

    async def look():
        await _never()

    with pytest.raises(OutcomeUnknown, match="look at the history"):
        asyncio.run(_publisher_within(0.05)._exclusively("publishing", attempt, look))
    assert _FakeProducer.log == ["start", "stop"] * 2


def test_a_timeout_of_kafkas_own_before_the_deadline_ends_the_call_as_before(fake_kafka):
    async def attempt(producer):
        raise TimeoutError("a request timed out")

    with pytest.raises(TimeoutError, match="a request timed out") as info:
        asyncio.run(_publisher_within(60)._exclusively("publishing", attempt))
    assert not isinstance(info.value, PublishConflict)


def test_an_unknown_outcome_of_publish_names_its_publication(monkeypatch):
    async def unknown(self, what, attempt, look=None):
        raise OutcomeUnknown(f"{what} 'gmm'", _sender_error(UnknownError()))

    monkeypatch.setattr(Publisher, "_exclusively", unknown)
    model = ModelParams.loads(json.dumps(GOOD).encode())
    with pytest.raises(OutcomeUnknown, match=r"its publication id: [0-9a-f]{32}\)$"):
        asyncio.run(_publisher().publish(model, "cli"))


def test_out_of_time_a_try_whose_abort_never_ends_is_not_waited_for(fake_kafka):
    """aiokafka aborts a cancelled try's transaction and waits on the broker for it."""

    async def attempt(producer):
        try:
            await _never()
        finally:
            await _never()  # the abort, on a broker that never answers

    began = time.monotonic()
    with pytest.raises(PublishTimedOut):
        asyncio.run(_publisher_within(0.05)._exclusively("publishing", attempt))
    assert time.monotonic() - began < 5
    assert _FakeProducer.log == ["start", "stop"]


def test_kafkas_own_timeout_in_a_commit_leaves_the_outcome_unknown(fake_kafka):
    async def attempt(producer):
        raise _at_commit(producer, TimeoutError())

    with pytest.raises(OutcomeUnknown):
        asyncio.run(_publisher_within(60)._exclusively("publishing", attempt))


def test_out_of_time_after_a_commit_that_nothing_looked_at_the_outcome_is_unknown(fake_kafka):
    """With no look (an idempotent call), a try fenced in its commit may have committed: the
    deadline after it cannot say that nothing was."""
    tries = []

    async def attempt(producer):
        tries.append(producer)
        if len(tries) == 1:
            raise _at_commit(producer, ProducerFenced())
        await _never()

    with pytest.raises(OutcomeUnknown):
        asyncio.run(_publisher_within(0.05)._exclusively("re-asserting", attempt))
    assert len(tries) == 2
