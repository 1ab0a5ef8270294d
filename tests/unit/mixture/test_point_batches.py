"""Batches of records decoded at once give what decoding them one by one gives."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from mixture.params import MAX_DIM
from mixture.point_batches import _common_shape, common_points, decode_coordinates
from mixture.points import PointError, decode_point

MAX_BYTES = 4096


def one_by_one(values: list[bytes | None], dim: int | None) -> tuple[dict, dict]:
    """The reference: decode_point per record, grouped as decode_coordinates groups."""
    rows: dict[int, list] = {}
    invalid = {}
    for i, value in enumerate(values):
        try:
            if value is None:
                raise PointError("tombstone", "")
            x = decode_point(value, dim, MAX_BYTES).x
        except PointError as exc:
            invalid[i] = exc.reason
            continue
        if len(x) > MAX_DIM:
            invalid[i] = "wrong_dim"
            continue
        rows.setdefault(len(x), []).append((i, [np.nan if v is None else float(v) for v in x]))
    return rows, invalid


def same_as_one_by_one(values: list[bytes | None], dim: int | None) -> None:
    decoded = decode_coordinates(values, dim, MAX_BYTES)
    rows, invalid = one_by_one(values, dim)
    assert dict(decoded.invalid) == invalid
    assert set(decoded.points) == set(rows)
    for d, (index, coords) in decoded.points.items():
        assert coords.dtype == np.float64 and coords.shape == (len(index), d)
        assert_array_equal(index, [i for i, _ in rows[d]])
        assert_array_equal(coords, np.array([x for _, x in rows[d]]).reshape(-1, d))


coordinate = st.floats(-1e16, 1e16, allow_nan=False) | st.integers(-(10**16), 10**16)
valid = st.builds(
    lambda i, x: json.dumps({"id": i, "x": x}).encode(),
    st.none() | st.integers(0, 10**6) | st.text(max_size=4),
    st.lists(coordinate, min_size=2, max_size=2) | coordinate,
)
glitch = st.sampled_from(
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        b'{"id": 1}',
        b'{"x": [1.0, null]}',
        b'{"x": [null, null]}',
        b'{"x": true}',
        b'{"x": [1.0, true]}',
        b'{"x": [1.0, "2"]}',
        b'{"x": []}',
        b'{"x": [1.0, 2.0, 3.0]}',
        b'{"x": 1e999}',
        b'{"x": [NaN, 1.0]}',
        b'{"id": true, "x": [1.0, 2.0]}',
        b'{"id": 1.5, "x": [1.0, 2.0]}',
        b'{"x": [1.0, 2.0], "pad": "' + b"a" * MAX_BYTES + b'"}',
        json.dumps({"x": [0.0] * 40}).encode(),
        json.dumps({"x": [0] * (MAX_DIM + 1)}).encode(),
        json.dumps({"x": [10**400, 1]}).encode(),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid | glitch, max_size=12), st.sampled_from([None, 1, 2]))
def test_any_batch_decodes_as_its_records_do_one_by_one(values, dim):
    same_as_one_by_one(values, dim)


@settings(max_examples=100, deadline=None)
@given(st.lists(valid, min_size=1, max_size=12))
def test_a_batch_of_valid_points_of_one_dimension_takes_the_batch_passes(values):
    sizes = {len(np.atleast_1d(json.loads(v)["x"])) for v in values}
    decoded = _common_shape(values, None, MAX_BYTES)
    in_range = all(
        np.all(np.abs(np.atleast_1d(json.loads(v)["x"]).astype(float)) <= 1e15) for v in values
    )
    if len(sizes) == 1 and in_range:
        assert decoded is not None
        same_as_one_by_one(values, None)
    else:
        assert decoded is None


def test_one_glitch_sends_the_batch_one_by_one_and_loses_nothing():
    values = [json.dumps({"id": i, "x": [float(i), 1.0]}).encode() for i in range(1000)]
    values[500] = b'{"x": [1.0, false]}'
    decoded = decode_coordinates(values, 2)
    assert decoded.invalid == [(500, "not_numeric")]
    index, coords = decoded.points[2]
    assert len(index) == 999 and 500 not in index
    assert_array_equal(coords[:, 0], [float(i) for i in range(1000) if i != 500])


@settings(max_examples=300, deadline=None)
@given(st.lists(valid | glitch, max_size=12), st.sampled_from([None, 1, 2]))
def test_common_points_are_decode_point_s_or_none(values, dim):
    """The worker's batch path: each Point exactly as decode_point gives it (x as sent,
    integers kept, bare numbers marked), or None whenever the batch is not all of the usual
    shape, so that the worker decides record by record."""
    common = common_points(values, dim, MAX_BYTES)
    if common is None:
        assert _common_shape(values, dim, MAX_BYTES) is None
        return
    points, coords = common
    expected = [decode_point(v, dim, MAX_BYTES) for v in values]
    assert points == expected
    assert [list(map(type, p.x)) for p in points] == [list(map(type, p.x)) for p in expected]
    same_as_one_by_one(values, dim)
    assert_array_equal(coords, np.array([p.x for p in points], np.float64))
