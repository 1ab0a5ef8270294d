"""The params record (wire.params_record): a model as key, value and headers, decoded back for
the name a reader serves; withdrawal markers; signatures carried in a header."""

from __future__ import annotations

import json

import pytest

from mixture.params import FitMetadata, MixtureParams, ModelParams, ParamsError
from wire.params_record import (
    SIGNATURE_HEADER,
    WITHDRAWN_SCHEMA,
    NameState,
    ParamsUpdate,
    candidate_key,
    decode,
    encode,
    encode_withdrawal,
    key_of,
    signature_headers,
    signature_of,
    signed_message,
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
    assert signature_headers("params", b"k", b"v", FakeSigner()) == [("gmm-signature", b"s" * 64)]
    assert encode(model(), "gmm").headers is None  # unsigned


def test_a_withdrawal_round_trips():
    record = encode_withdrawal("gmm", 7, FakeSigner())
    assert record.key == b"gmm@candidate"
    assert record.value == b'{"schema": "gmm-candidate-withdrawn/1", "name": "gmm", "version": 7}'
    assert record.value == withdrawn_marker("gmm", 7) and record.headers is not None
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
        (b"gmm", withdrawn_marker("gmm", 3), "invalid"),  # a marker on the served key
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


def test_what_is_signed_names_the_topic_the_key_and_the_value():
    """A signature holds for one record: the same value under another key, or copied from the
    history topic onto the params topic, is another message."""
    value = model().dumps().encode()
    messages = {
        signed_message("params", b"gmm", value),
        signed_message("params", b"gmm@candidate", value),
        signed_message("history", b"gmm", value),
        signed_message("params", b"gm", b"m" + value),  # the key's length is part of it
        signed_message("params", b"other", value),
    }
    assert len(messages) == 5
    with pytest.raises(ValueError, match="role"):
        signed_message("elsewhere", b"gmm", value)


def test_history_records_are_keyed_by_the_name_at_every_stage():
    record = encode(model(stage="candidate"), "gmm", "candidate", role="history")
    assert record.key == b"gmm"
    update = decode(record.key, record.value, "gmm", "history")
    assert update is not None and update.model is not None


def test_a_version_under_the_key_of_another_stage_is_refused():
    """A candidate's value under the served key (copied from the history topic, where every
    stage is keyed by the name) is not served; nor is a served version under the candidate key."""
    with pytest.raises(ParamsError) as info:
        decode(b"gmm", model(stage="candidate").dumps().encode(), "gmm")
    assert info.value.reason == "stage_mismatch"
    with pytest.raises(ParamsError) as info:
        decode(b"gmm@candidate", model(stage="served").dumps().encode(), "gmm")
    assert info.value.reason == "stage_mismatch"


def test_another_names_marker_withdraws_nothing():
    with pytest.raises(ParamsError) as info:
        decode(b"gmm@candidate", withdrawn_marker("other", 99), "gmm")
    assert info.value.reason == "name_mismatch"
    legacy = json.dumps({"schema": WITHDRAWN_SCHEMA, "version": 4}).encode()
    assert decode(b"gmm@candidate", legacy, "gmm") == ParamsUpdate("candidate", None, 4)


def _state(*updates: ParamsUpdate) -> tuple[NameState, list[str]]:
    state = NameState()
    return state, [state.apply(u) for u in updates]


def served(v: int) -> ParamsUpdate:
    return ParamsUpdate("served", model(v))


def candidate(v: int) -> ParamsUpdate:
    return ParamsUpdate("candidate", model(v, stage="candidate"))


def marker(v: int) -> ParamsUpdate:
    return ParamsUpdate("candidate", None, v)


def test_name_state_follows_a_lifecycle():
    # served 1, candidate 2 rejected (marker 2), candidate 3 promoted as 4 (marker 4)
    state, outcomes = _state(served(1), candidate(2), marker(2), candidate(3), served(4), marker(4))
    assert outcomes == ["served", "candidate", "withdrawn", "candidate", "served", "withdrawn"]
    assert state.newest is not None and state.newest.version == 4
    assert state.candidate is None and state.highest == 4
    assert [m.version for m in state.served] == [1, 4]


def test_replays_change_nothing():
    state, _ = _state(served(1), candidate(2), marker(2), candidate(3))
    assert state.candidate is not None and state.candidate.version == 3
    # an old marker (written for candidate 2) does not withdraw candidate 3
    assert state.apply(marker(2)) == "replayed"
    # an old candidate does not replace candidate 3, nor come back once it is withdrawn
    assert state.apply(candidate(2)) == "replayed"
    assert state.candidate.version == 3 and state.highest == 3
    assert state.apply(candidate(3)) == "unchanged"  # a copy of the candidate in shadow
    assert state.apply(marker(3)) == "withdrawn"
    assert state.apply(candidate(3)) == "replayed" and state.candidate is None
    # an old served version does not replace the newest; a copy of the newest changes nothing
    assert state.apply(served(1)) == "unchanged"
    assert state.apply(served(0)) == "replayed"
    assert state.newest is not None and state.newest.version == 1 and state.highest == 3
    # a marker with nothing to withdraw only records the highest version taken
    assert state.apply(marker(5)) == "marked" and state.highest == 5
    assert state.apply(marker(5)) == "unchanged"  # a copy of it
    assert state.apply(marker(4)) == "replayed"  # older than the newest marker
    assert state.apply(candidate(5)) == "replayed"
    assert state.apply(candidate(6)) == "candidate"


def test_an_old_marker_replayed_with_no_candidate_pending_is_refused():
    """Markers only increase: an old one is a replay even with nothing to withdraw, so it can
    never be taken for the key's current record (and compaction must not keep it)."""
    state, outcomes = _state(served(1), candidate(2), marker(2), served(3), candidate(4), marker(4))
    assert outcomes[-1] == "withdrawn" and state.candidate is None
    assert state.apply(marker(2)) == "replayed"
    assert state.highest == 4 and state.marker == 4
