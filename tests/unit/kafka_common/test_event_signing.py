"""Authenticated events: a worker's signature over the domain tag, the record key and value,
in the `gmm-event-signature` header; the trainer learns which listed key signed a record."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from kafka_common import events
from kafka_common.event_signing import (
    DOMAIN,
    HEADER,
    EventSigner,
    EventVerifier,
    message,
    signature_of,
)
from kafka_common.events import EventProducer
from kafka_common.settings import KafkaSettings, SettingsError
from kafka_common.signing import Signer, Verifier, keygen
from wire.event import Event

pytestmark = pytest.mark.unit

TIME = "2025-01-01T12:00:00.000+00:00"
EVENT = Event("drift", "gmm", 3, 12.5, TIME, "moved")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two workers' key pairs: (private path, public path, key id) each."""
    base = tmp_path_factory.mktemp("keys")
    return keygen(base / "a"), keygen(base / "b")


def test_a_signed_record_names_its_key(keys):
    a, b = keys
    signer = EventSigner.from_file(a[0])
    value, key = EVENT.dumps(), EVENT.key
    headers = signer.headers(key, value)
    assert [name for name, _ in headers] == [HEADER] and len(headers[0][1]) == 64
    both = EventVerifier.from_files(f"{b[1]}, {a[1]}")
    assert both.key_ids == [b[2], a[2]]
    assert both.signer_of(key, value, headers) == a[2] == signer.key_id
    assert EventVerifier.from_files([b[1]]).signer_of(key, value, headers) is None


def test_unsigned_altered_or_moved_records_name_no_key(keys):
    a, _ = keys
    signer, verifier = EventSigner.from_file(a[0]), EventVerifier.from_files([a[1]])
    value, key = EVENT.dumps(), EVENT.key
    headers = signer.headers(key, value)
    assert verifier.signer_of(key, value, None) is None
    assert verifier.signer_of(key, value, []) is None
    assert verifier.signer_of(key, value, headers + headers) is None  # two signatures
    assert verifier.signer_of(key, value.replace(b"12.5", b"99.5"), headers) is None
    assert verifier.signer_of(b"other-model", value, headers) is None
    assert verifier.signer_of(key, None, headers) is None
    # The length prefix: moving bytes between key and value changes the message.
    assert message(b"ab", b"c") != message(b"a", b"bc")


def test_signatures_never_cross_between_params_and_events(keys):
    """A params signature (over a value's bytes) is no event signature, and an event signature
    (over the domain-tagged message) verifies as no params record."""
    a, _ = keys
    value, key = EVENT.dumps(), EVENT.key
    params_signature = Signer.from_file(a[0]).sign(value)
    verifier = EventVerifier.from_files([a[1]])
    assert verifier.signer_of(key, value, [(HEADER, params_signature)]) is None
    event_signature = EventSigner.from_file(a[0]).headers(key, value)[0][1]
    assert not Verifier.from_files([a[1]]).verify(value, event_signature)
    assert message(key, value).startswith(DOMAIN)


def test_signature_of_reads_one_header():
    assert signature_of(None) is None
    assert signature_of([("gmm-signature", b"x" * 64)]) is None
    assert signature_of([(HEADER, b"s")]) == b"s"
    assert signature_of([(HEADER, b"s"), (HEADER, b"t")]) is None


def test_bad_key_files_name_the_variable(tmp_path, keys):
    a, _ = keys
    with pytest.raises(SettingsError, match="GMM_EVENTS_SIGNING_KEY"):
        EventSigner.from_file(tmp_path / "missing.pem")
    with pytest.raises(SettingsError, match="GMM_EVENTS_SIGNING_KEY"):
        EventSigner.from_file(a[1])  # a public key
    with pytest.raises(SettingsError, match="GMM_EVENTS_VERIFY_KEY"):
        EventVerifier.from_files(str(a[0]))  # a private key
    with pytest.raises(SettingsError, match="GMM_EVENTS_VERIFY_KEY names no key"):
        EventVerifier.from_files(" , ")


class _FakeProducer:
    sent: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **options: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, "value": value, **kwargs})


def test_a_producer_with_a_signer_signs_every_event(monkeypatch, keys):
    a, _ = keys
    monkeypatch.setattr(events, "AIOKafkaProducer", _FakeProducer)
    _FakeProducer.sent = []

    async def run(signer: EventSigner | None) -> None:
        producer = EventProducer(KafkaSettings(), "ev", signer)
        await producer.send(EVENT)
        await producer.stop()

    asyncio.run(run(EventSigner.from_file(a[0])))
    asyncio.run(run(None))
    signed, unsigned = _FakeProducer.sent
    verifier = EventVerifier.from_files([a[1]])
    assert signed["value"] == unsigned["value"] == EVENT.dumps()  # the record is unchanged
    assert verifier.signer_of(signed["key"], signed["value"], signed["headers"]) == a[2]
    assert unsigned["headers"] is None
