"""Forged events decide nothing: with GMM_EVENTS_VERIFY_KEY the trainer takes shadow reports and
drift alarms only when a listed worker key signed them, keeps reports per (key, worker id) with
a bound per key, and a replayed drift alarm does not start another refit."""

from __future__ import annotations

import datetime as dt

import pytest

from kafka_common.event_signing import EventSigner, EventVerifier
from kafka_common.signing import keygen
from trainer import events as trainer_events
from trainer.events import MAX_REPORTERS_PER_KEY, Received, Refused, ShadowTally, admit
from trainer.main import MAX_CLOCK_SKEW_SECONDS, DriftRequests
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings
from wire.event import Event
from wire.shadow_report import ShadowReport, ShadowTotals

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


def test_a_replayed_drift_alarm_starts_no_second_refit():
    class T:
        version = 4

    drift = DriftRequests()
    second_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    alarm = Event("drift", "gmm", 4, 50.0, second_ago.isoformat(timespec="milliseconds"))
    assert drift.raise_for(alarm.version, alarm.time) is None
    assert drift.pending_for(T())
    drift.answer()  # the refit it asked for started
    # The same signed record sent again: answered already.
    assert drift.raise_for(alarm.version, alarm.time) == "stale"
    assert not drift.pending_for(T())
    # An alarm raised since is a new one.
    later = Event.now("drift", "gmm", 4, 60.0)
    assert drift.raise_for(later.version, later.time) is None and drift.pending_for(T())


def test_a_drift_alarm_from_the_future_is_refused():
    drift = DriftRequests()
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS + 60)
    assert drift.raise_for(4, ahead.isoformat(timespec="milliseconds")) == "future"
    assert drift.version is None


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
