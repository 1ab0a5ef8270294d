"""The params record (wire.params_record): a model as key, value and headers, decoded back for
the name a reader serves; withdrawal markers; signatures carried in a header."""

from __future__ import annotations

import json

import pytest

from mixture.params import FitMetadata, MixtureParams, ModelParams, ParamsError
from wire.params_record import (
    SIGNATURE_HEADER,
    WITHDRAWN_SCHEMA,
    ParamsUpdate,
    candidate_key,
    decode,
    encode,
    encode_withdrawal,
    key_of,
    signature_headers,
    signature_of,
    stage_of,
    stamped,
    withdrawn_marker,
    withdrawn_version,
)

pytestmark = pytest.mark.unit


def model(version: int = 3, name: str = "gmm", stage: str = "served") -> ModelParams:
    m = ModelParams(version, MixtureParams([0.5, 0.5], [[0.0], [5.0]], [1.0]), FitMetadata())
    return stamped(m, name, "trainer", stage=stage)


class FakeSigner:
    def sign(self, value: bytes) -> bytes:
        return b"s" * 64 if value else b""


@pytest.mark.parametrize("stage", ["served", "candidate"])
def test_a_model_round_trips_through_its_record(stage):
    m = model(stage=stage)
    record = encode(m, "gmm", stage)
    assert record.key == key_of("gmm", stage) and record.headers is None
    assert record.value == m.dumps().encode()  # the model's own JSON, unchanged
    update = decode(record.key, record.value, "gmm")
    assert update is not None and update.stage == stage and update.withdrawn_at is None
    assert update.model is not None and update.model.to_json() == m.to_json()
    assert update.taken == 3


def test_keys():
    assert key_of("gmm", "served") == b"gmm"
    assert key_of("gmm", "candidate") == candidate_key("gmm").encode() == b"gmm@candidate"
    assert stage_of(b"gmm", "gmm") == "served"
    assert stage_of(b"gmm@candidate", "gmm") == "candidate"
    assert stage_of(b"other", "gmm") is None and stage_of(None, "gmm") is None
    with pytest.raises(ValueError, match="stage"):
        key_of("gmm", "retired")


def test_a_signed_record_carries_one_signature_header():
    record = encode(model(), "gmm", signer=FakeSigner())
    assert record.headers == [(SIGNATURE_HEADER, b"s" * 64)] == [("gmm-signature", b"s" * 64)]
    assert signature_of(record.headers) == b"s" * 64
    assert signature_of(None) is None and signature_of([]) is None
    assert signature_of(record.headers * 2) is None  # two signatures: none
    assert signature_headers(b"v", FakeSigner()) == [("gmm-signature", b"s" * 64)]
    assert encode(model(), "gmm").headers is None  # unsigned


def test_a_withdrawal_round_trips():
    record = encode_withdrawal("gmm", 7, FakeSigner())
    assert record.key == b"gmm@candidate"
    assert record.value == b'{"schema": "gmm-candidate-withdrawn/1", "version": 7}'
    assert record.value == withdrawn_marker(7) and record.headers is not None
    assert decode(record.key, record.value, "gmm") == ParamsUpdate("candidate", None, 7)
    assert withdrawn_version(record.value) == 7
    assert decode(record.key, record.value, "gmm").taken == 7


def test_tombstones():
    assert decode(b"gmm", None, "gmm") is None  # nothing on the served key
    assert decode(b"gmm@candidate", None, "gmm") == ParamsUpdate("candidate", None)


def test_another_names_record_is_nothing():
    record = encode(model(name="a"), "a")
    assert decode(record.key, record.value, "b") is None
    assert decode(b"b@candidate", record.value, "a") is None


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"b", encode(model(name="a"), "a").value, "name_mismatch"),  # says a, keyed b
        (b"gmm", b"{not json", "not_json"),
        (b"gmm", b"\xff\xfe", "not_json"),
        (b"gmm", b"[1, 2]", "invalid"),
        (b"gmm", withdrawn_marker(3), "invalid"),  # a marker on the served key
        (b"gmm@candidate", b'{"schema": "gmm-params/1", "version": 1}', "invalid"),
        (b"gmm", b'{"weights": ' + b"[" * 50000 + b"]" * 50000 + b"}", "not_json"),
    ],
    ids=["name-mismatch", "not-json", "not-utf8", "list", "marker-served", "no-arrays", "deep"],
)
def test_a_malformed_record_is_refused_with_a_reason(key, value, reason):
    name = key.decode().split("@")[0]
    with pytest.raises(ParamsError) as info:
        decode(key, value, name)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "value",
    [
        json.dumps({"schema": WITHDRAWN_SCHEMA, "version": -1}).encode(),
        json.dumps({"schema": WITHDRAWN_SCHEMA, "version": "7"}).encode(),
        json.dumps({"schema": WITHDRAWN_SCHEMA, "version": True}).encode(),
        json.dumps([WITHDRAWN_SCHEMA]).encode(),
        WITHDRAWN_SCHEMA.encode() + b" not json",
        None,
    ],
)
def test_values_that_are_not_markers(value):
    assert withdrawn_version(value) is None


def test_stamped_names_the_name_the_publisher_and_the_provenance():
    m = stamped(model(), "a", "rollback", rolled_back_from=1)
    assert {k: m.metadata.extra[k] for k in ("model_name", "published_by", "rolled_back_from")} == {
        "model_name": "a",
        "published_by": "rollback",
        "rolled_back_from": 1,
    }
    with pytest.raises(ValueError, match="published_by"):
        stamped(model(), "a", "someone")
