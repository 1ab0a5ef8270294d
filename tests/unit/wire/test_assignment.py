"""The assignment record: what the worker and gmm-classify write is what readers decode."""

from __future__ import annotations

import orjson
import pytest

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
