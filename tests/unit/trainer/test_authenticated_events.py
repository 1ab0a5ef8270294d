"""Forged events decide nothing: with GMM_EVENTS_VERIFY_KEY the trainer takes shadow reports and
drift alarms only when a listed worker key signed them, keeps reports per (key, worker id) with
a bound per key, counts a report only for the candidate whose digest it carries (an old signed
report about an earlier candidate of the same version decides nothing), and a replayed drift
alarm does not start another refit, whichever way the worker's clock is off."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from kafka_common.event_signing import EventSigner, EventVerifier
from kafka_common.signing import keygen
from mixture.params import FitMetadata, MixtureParams, ModelParams
from trainer import events as trainer_events
from trainer import main as trainer_main
from trainer.cycle import Trainer
from trainer.events import MAX_REPORTERS_PER_KEY, Received, Refused, ShadowTally, admit
from trainer.main import MAX_CLOCK_SKEW_SECONDS, DriftRequests
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from wire.event import Event
from wire.shadow_report import ShadowReport, ShadowTotals, model_digest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return keygen(base / "worker"), keygen(base / "stranger")


def report(worker: str, records: int, clipped: float, candidate: int = 5) -> Event:
    """A shadow report on candidate `candidate` against served version 4."""
    totals = ShadowTotals(records, 0.0, 0.0, records, clipped)
    return ShadowReport(candidate, 4, worker, totals).to_event("gmm")


def record(event: Event, signer: EventSigner | None) -> tuple[bytes, bytes, list | None]:
    value = event.dumps()
    return event.key, value, signer.headers(event.key, value) if signer else None


def test_without_verify_keys_every_valid_event_is_taken():
    event = report("w", 10, 1.0)
    assert admit(*record(event, None), None) == Received(event, None)
    refused = admit(b"gmm", b"{not json", None, None)
    assert isinstance(refused, Refused) and refused.reason == "invalid"


def test_with_verify_keys_only_signed_deciding_events_are_taken(keys):
    worker, stranger = keys
    verifier = EventVerifier.from_files([worker[1]])
    ours, theirs = EventSigner.from_file(worker[0]), EventSigner.from_file(stranger[0])
    drift = Event.now("drift", "gmm", 4, 50.0)
    for event in (report("w", 10, 1.0), drift):
        assert admit(*record(event, ours), verifier) == Received(event, worker[2])
        assert admit(*record(event, None), verifier).reason == "unsigned"
        assert admit(*record(event, theirs), verifier).reason == "bad_signature"
        key, value, headers = record(event, ours)
        forged = value.replace(b'"version":', b'"version":1')  # a genuine signature, altered
        assert admit(key, forged, headers, verifier).reason == "bad_signature"
    # Another model's key under the same value: the key is signed too.
    key, value, headers = record(drift, ours)
    assert admit(b"other", value, headers, verifier).reason == "bad_signature"
    # The trainer's own events decide nothing for it: read unsigned, as information.
    promoted = Event.now("promoted", "gmm", 6, 0.1)
    assert admit(*record(promoted, None), verifier) == Received(promoted, None)


def test_a_key_cannot_crowd_out_another_keys_reports():
    refusals: list[str] = []
    tally = ShadowTally(lambda reason, detail: refusals.append(reason))
    for i in range(MAX_REPORTERS_PER_KEY + 50):  # one key claims 306 workers
        tally.update(report(f"fake-{i}", 1000, -9000.0), reporter="stolen")
    assert refusals == ["too_many_reporters"] * 50
    assert tally.totals(5, 4).records == MAX_REPORTERS_PER_KEY * 1000
    # The other key's workers still count.
    assert tally.update(report("real", 500, 25.0), reporter="honest")
    assert tally.totals(5, 4).records == MAX_REPORTERS_PER_KEY * 1000 + 500
    # A known reporter's later totals are taken even with its key full.
    assert tally.update(report("fake-0", 2000, -18000.0), reporter="stolen")
    # A candidate decided frees its reporters' places.
    tally.forget(5)
    assert tally.update(report("fake-new", 1, 0.0, candidate=6), reporter="stolen")


def test_a_worker_id_is_trusted_only_within_its_key():
    tally = ShadowTally()
    tally.update(report("host-1", 1000, 50.0), reporter="honest")
    # Another key claims the same worker id with bigger totals: a separate reporter, which
    # neither replaces nor removes the honest one's report.
    tally.update(report("host-1", 5000, -50000.0), reporter="stolen")
    assert tally.totals(5, 4).records == 6000
    assert tally.totals(5, 4).clipped_difference_sum == 50.0 - 50000.0
    # A replay of an older report of the same (key, worker) changes nothing.
    tally.update(report("host-1", 500, -5000.0), reporter="honest")
    assert tally.totals(5, 4).records == 6000


def test_a_full_table_still_takes_known_reporters(monkeypatch):
    monkeypatch.setattr(trainer_events, "MAX_REPORTERS", 2)
    tally = ShadowTally()
    assert tally.update(report("a", 10, 1.0)) and tally.update(report("b", 10, 1.0))
    assert not tally.update(report("c", 10, 1.0))
    assert tally.update(report("a", 20, 2.0))  # before: refused once the table was full
    assert tally.totals(5, 4).records == 30


class Served4:
    version = 4


def alarm_at(at: dt.datetime, version: int = 4) -> Event:
    return Event("drift", "gmm", version, 50.0, at.isoformat(timespec="milliseconds"))


def test_a_replayed_drift_alarm_starts_no_second_refit():
    drift = DriftRequests()
    second_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    alarm = alarm_at(second_ago)
    assert drift.raise_for(alarm.version, alarm.time, "key") is None
    assert drift.pending_for(Served4())
    # The same signed record sent again before the cycle: taken already.
    assert drift.raise_for(alarm.version, alarm.time, "key") == "duplicate"
    drift.answer()  # the refit it asked for started
    # ...and after it: answered already.
    assert drift.raise_for(alarm.version, alarm.time, "key") == "duplicate"
    assert not drift.pending_for(Served4())
    # An alarm raised since is a new one.
    later = Event.now("drift", "gmm", 4, 60.0)
    assert drift.raise_for(later.version, later.time, "key") is None
    assert drift.pending_for(Served4())


def test_an_alarm_from_before_the_last_cycle_is_stale():
    drift = DriftRequests()
    drift.answer()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS + 30)
    assert drift.raise_for(4, alarm_at(long_ago).time, "key") == "stale"
    assert not drift.pending_for(Served4())


def test_a_slow_workers_alarm_after_a_cycle_started_is_taken():
    # The worker's clock is 30 s slow: its alarm, raised just after the cycle started, is dated
    # 30 s before the start. Within the allowance: a new alarm, not one the cycle answered.
    drift = DriftRequests()
    drift.answer()
    slow = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    assert drift.raise_for(4, alarm_at(slow).time, "slow-key") is None
    assert drift.pending_for(Served4())


def test_a_fast_workers_alarm_copied_after_the_next_cycle_starts_no_refit():
    # The worker's clock is 50 s fast: its alarm is dated after the next cycle's start, so it
    # is not stale then; its copy is still refused.
    drift = DriftRequests()
    fast = alarm_at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=50))
    assert drift.raise_for(4, fast.time, "fast-key") is None
    drift.answer()
    assert drift.raise_for(4, fast.time, "fast-key") == "duplicate"
    assert not drift.pending_for(Served4())
    # Another worker's alarm of the same millisecond is its own.
    assert drift.raise_for(4, fast.time, "other-key") is None


def test_remembered_alarms_are_bounded_and_forgotten_once_stale(monkeypatch):
    monkeypatch.setattr(trainer_main, "MAX_REMEMBERED_ALARMS", 3)
    drift = DriftRequests()
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)
    times = [alarm_at(before - dt.timedelta(seconds=s)).time for s in (5, 4, 3, 2)]
    for at in times:  # no cycle has started yet: none is stale
        assert drift.raise_for(4, at, "key") is None
    assert len(drift._accepted) == 3  # the oldest went first
    assert drift.raise_for(4, times[-1], "key") == "duplicate"
    # A cycle starts more than the allowance after them: they are stale, and forgotten.
    drift.answer()
    assert drift.raise_for(4, times[-1], "key") == "stale"
    assert drift.raise_for(4, Event.now("drift", "gmm", 4, 1.0).time, "key") is None
    assert len(drift._accepted) == 1


def test_a_drift_alarm_from_the_future_is_refused():
    drift = DriftRequests()
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS + 60)
    assert drift.raise_for(4, ahead.isoformat(timespec="milliseconds")) == "future"
    assert drift.version is None


def candidate_model(version: int, fitted_at: dt.datetime, sd: float = 1.0) -> ModelParams:
    return ModelParams(
        version,
        MixtureParams([1.0], [[0.0]], [sd]),
        FitMetadata(fitted_at=fitted_at.isoformat(timespec="seconds")),
    )


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[ModelParams] = []
        self.withdrawn: list[int] = []

    async def withdraw_candidate(self, version: int) -> None:
        self.withdrawn.append(version)

    async def publish(self, model: ModelParams, published_by: str, **_: object) -> ModelParams:
        promoted = dataclasses.replace(model, version=model.version + 1)
        self.published.append(promoted)
        return promoted


def test_an_old_signed_report_on_an_earlier_candidate_of_the_version_decides_nothing(keys):
    """Version numbering restarted (a key upgrade): candidate 3 of January 2025 and today's
    candidate 3 are different models. The January reports, signed by a listed key and sent
    again, are refused; today's worker's report is counted."""
    worker = keys[0]
    verifier = EventVerifier.from_files([worker[1]])
    signer = EventSigner.from_file(worker[0])
    now = dt.datetime.now(dt.UTC)
    january = candidate_model(3, dt.datetime(2025, 1, 15, 9, tzinfo=dt.UTC))
    today = candidate_model(3, now)
    trainer = Trainer(TrainerSettings.from_env({"GMM_PROMOTION": "shadow"}), TrainerMetrics())
    trainer.publisher = publisher = FakePublisher()  # type: ignore[assignment]

    async def no_event(*_: object) -> None:
        return None

    trainer._event = no_event  # type: ignore[method-assign]
    trainer.current, trainer.candidate = candidate_model(2, now), today
    refusals: list[str] = []
    tally = ShadowTally(lambda reason, detail: refusals.append(reason))

    def deliver(report: ShadowReport, time: str | None = None) -> bool:
        event = report.to_event("gmm")
        if time is not None:
            event = dataclasses.replace(event, time=time)
        received = admit(*record(event, signer), verifier)
        assert isinstance(received, Received) and received.reporter == worker[2]
        # As trainer.main.watch_events passes it on.
        digest = trainer.candidate_digest(trainer.candidate)
        return tally.update(received.event, received.reporter, digest)

    # Enough records, well in the candidate's favour: either would promote it.
    better = ShadowTotals(10_000, -10_000.0, -20_000.0, 10_000, 10_000.0)
    old_time = "2025-01-15T10:00:00.000+00:00"
    # A report by a worker of January with the digest field, and one from before the field.
    assert not deliver(ShadowReport(3, 2, "host-1", better, model_digest(january)), old_time)
    assert not deliver(ShadowReport(3, 2, "host-1", better), old_time)
    assert refusals == ["other_candidate", "no_digest"]
    assert tally.totals(3, 2).records == 0
    assert asyncio.run(trainer.judge_candidate(tally)) is None  # still pending
    assert not publisher.published and trainer.candidate is today
    # Today's worker scored today's candidate (the trainer's copy read back from its record).
    assert deliver(ShadowReport(3, 2, "host-1", better, model_digest(today)))
    assert asyncio.run(trainer.judge_candidate(tally)) == "promoted"
    assert [m.version for m in publisher.published] == [4]


def test_unverified_reports_without_a_digest_are_still_taken():
    # A trainer without verify keys trusts the topic's ACLs, and workers older than the digest
    # may still report to it; a digest it has, though, must be its candidate's.
    refusals: list[str] = []
    tally = ShadowTally(lambda reason, detail: refusals.append(reason))
    assert tally.update(report("old", 10, 1.0), None, "0123456789abcdef")
    other = ShadowReport(5, 4, "new", ShadowTotals(10, 0.0, 0.0, 10, 1.0), "fedcba9876543210")
    assert not tally.update(other.to_event("gmm"), None, "0123456789abcdef")
    assert refusals == ["other_candidate"]
    assert tally.totals(5, 4, "0123456789abcdef").records == 10
    assert tally.totals(5, 4, "fedcba9876543210").records == 0


def test_refusals_are_counted_by_reason():
    from trainer.main import refused_events

    metrics = TrainerMetrics()
    refused = refused_events(metrics)
    for reason in ("unsigned", "unsigned", "bad_signature"):
        refused(reason, "a forged event")
    value = metrics.registry.get_sample_value
    assert value("gmm_trainer_events_refused_total", {"reason": "unsigned"}) == 2
    assert value("gmm_trainer_events_refused_total", {"reason": "bad_signature"}) == 1


def test_settings_load_the_keys(keys, tmp_path):
    worker, _ = keys
    assert TrainerSettings.from_env({}).events_verifier() is None
    settings = TrainerSettings.from_env({"GMM_EVENTS_VERIFY_KEY": str(worker[1])})
    assert settings.events_verifier().key_ids == [worker[2]]
    from kafka_common.settings import SettingsError

    with pytest.raises(SettingsError, match="GMM_EVENTS_VERIFY_KEY"):
        TrainerSettings.from_env({"GMM_EVENTS_VERIFY_KEY": str(tmp_path / "none.pem")})
