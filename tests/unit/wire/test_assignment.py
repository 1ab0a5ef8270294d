"""The assignment record: what the worker and gmm-classify write is what readers decode."""

from __future__ import annotations

from typing import NamedTuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import assignment
from wire.common import KeyCut, WireError

SOURCE = {"topic": "points", "partition": 2, "offset": 41}


def encoded(**overrides):
    args = {
        "point_id": "p-1",
        "x": [4.2],
        "scalar": True,
        "assignment": 1,
        "probs": [0.25, 0.75],
        "log_likelihood": -2.5,
        "model": "gmm",
        "model_version": 7,
        "ts_in": 1.5,
        "ts_out": 2.5,
        "source": SOURCE,
    }
    return assignment.encode(**{**args, **overrides})


def test_round_trip_keeps_every_field_and_echoes_x_as_sent():
    record = assignment.decode(encoded())
    assert (record["id"], record["x"], record["assignment"]) == ("p-1", 4.2, 1)
    assert (record["probs"], record["log_likelihood"]) == ([0.25, 0.75], -2.5)
    assert (record["model"], record["model_version"]) == ("gmm", 7)
    assert (record["ts_in"], record["ts_out"], record["source"]) == (1.5, 2.5, SOURCE)
    assert set(record) == {*assignment.FIELDS, "source"}
    assert assignment.decode(encoded(x=[1, 2.5], scalar=False))["x"] == [1, 2.5]


def test_missing_coordinates_and_a_cut_key_add_their_fields_only_when_present():
    record = assignment.decode(encoded(x=[None, 3.0], scalar=False, key_cut=KeyCut(9000, "ab")))
    assert record["missing"] == [0]
    assert (record["key_size"], record["key_sha256"], record["key_truncated"]) == (9000, "ab", True)
    assert "missing" not in assignment.decode(encoded()) and "key_size" not in orjson.loads(
        encoded()
    )


def test_offline_records_have_no_source():
    record = assignment.decode(encoded(source=None, ts_in=None, point_id=3))
    assert record["source"] is None and record["ts_in"] is None and record["id"] == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"[1]", "not a JSON object"),
        (b"{", "not JSON"),
        (orjson.dumps({"id": "a"}), "missing 'x'"),
        (encoded().replace(b'"assignment":1', b'"assignment":true'), "'assignment' must be int"),
        (encoded().replace(b'"assignment":1', b'"assignment":5'), "not a component"),
        (encoded().replace(b'"partition":2', b'"partition":"2"'), "'partition' must be int"),
    ],
)
def test_malformed_records_are_refused_with_the_reason(value, message):
    with pytest.raises(WireError, match=message):
        assignment.decode(value)


point_ids = (
    st.text(max_size=12)
    | st.sampled_from(['{"id":', '},{"id":1', '"', "\\", "é\u2028", "{}"])
    | st.integers(-(2**63), 2**63 - 1)
)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)
rows = st.tuples(
    point_ids,
    st.lists(numbers | st.none(), min_size=1, max_size=3),
    st.booleans(),
    st.integers(0, 5),
    st.lists(st.floats(0, 1), min_size=1, max_size=3),
    st.floats(-1e6, 0),
    st.none() | st.floats(0, 2e9),
    st.none() | st.builds(lambda o: {**SOURCE, "offset": o}, st.integers(0, 2**40)),
    st.none() | st.builds(KeyCut, st.integers(5000, 10**6), st.text("0123456789abcdef")),
)


class Input(NamedTuple):
    timestamp: float | None
    key_cut: KeyCut | None


class Decoded(NamedTuple):
    x: list
    scalar: bool


@settings(max_examples=200, deadline=None)
@given(st.lists(rows, max_size=8))
def test_encode_many_writes_encode_s_bytes_for_every_row(batch):
    batch = [(*row[:2], row[2] and len(row[1]) == 1, *row[3:]) for row in batch]
    expected = [
        encoded(
            point_id=p, x=x, scalar=s, assignment=a, probs=pr, log_likelihood=ll,
            model="m", model_version=3, ts_in=t, ts_out=9.5, source=src, key_cut=cut,
        )
        for p, x, s, a, pr, ll, t, src, cut in batch
    ]  # fmt: skip
    answered = [(Input(row[6], row[8]), Decoded(row[1], row[2])) for row in batch]
    columns = [[row[i] for row in batch] for i in (0, 7, 3, 4, 5)]
    assert assignment.encode_many(answered, *columns, "m", 3, 9.5) == expected


def test_the_slice_is_cut_only_at_each_doc_s_start():
    docs = [
        {"id": '},{"id":', "n": {"k": 1}},
        {"id": 2, "text": '{"id": 3}', "s": {"topic": "{", "partition": 0}},
        {"id": None, "nested": [{"a": "{"}]},
    ]
    assert assignment._dumps_each(docs) == [orjson.dumps(d) for d in docs]
    assert assignment._dumps_each([]) == []
    # docs not as promised: encoded one by one rather than cut wrong
    for odd in ([{"a": {"id": 1}}, {"id": 2}, {"id": 3, "b": {"id": 4}}], [{"a": {"id": 1}}]):
        assert assignment._dumps_each(odd) == [orjson.dumps(d) for d in odd]
