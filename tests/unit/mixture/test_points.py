"""Point validation: every kind of bad record gets its own reason code."""

from __future__ import annotations

import pytest

from mixture.points import REASONS, PointError, decode_point


@pytest.mark.parametrize(
    ("raw", "dim", "reason"),
    [
        (b"x" * 70_000, None, "oversized"),
        (b"not json", None, "not_json"),
        (b"\xff\xfe", None, "not_json"),
        (b'{"x": NaN}', None, "not_finite"),  # not JSON either, but that is what is wrong
        (b'{"x": [1, -Infinity]}', None, "not_finite"),
        (b'{"x": "NaN"}', None, "not_numeric"),
        (b"[1, 2]", None, "not_object"),
        (b"3.5", None, "not_object"),
        (b'{"id": 1}', None, "missing_x"),
        (b'{"x": "1.5"}', None, "not_numeric"),
        (b'{"x": true}', None, "not_numeric"),
        (b'{"x": [1, null]}', 1, "wrong_dim"),  # a null coordinate is missing (D >= 2)
        (b'{"x": [null]}', None, "no_observed_values"),
        (b'{"x": []}', None, "not_numeric"),
        (b'{"x": {"a": 1}}', None, "not_numeric"),
        (b'{"x": 1e999}', None, "not_finite"),
        (b'{"x": 1e300}', None, "out_of_range"),
        (b'{"x": [1, -2e15]}', None, "out_of_range"),
        (b'{"x": [1, 2]}', 1, "wrong_dim"),
        (b'{"x": 1}', 2, "wrong_dim"),
        (b'{"id": [1], "x": 1}', None, "bad_id"),
    ],
)
def test_reasons(raw, dim, reason):
    assert reason in REASONS
    with pytest.raises(PointError) as info:
        decode_point(raw, dim)
    assert info.value.reason == reason
    assert str(info.value)


@pytest.mark.parametrize(
    ("raw", "x", "scalar", "point_id"),
    [
        (b'{"x": 1}', [1.0], True, None),
        (b'{"id": "a", "x": -2.5}', [-2.5], True, "a"),
        (b'{"id": 7, "x": [1, 2.5]}', [1.0, 2.5], False, 7),
    ],
)
def test_valid(raw, x, scalar, point_id):
    p = decode_point(raw)
    assert p.x == x
    assert p.scalar is scalar
    assert p.id == point_id
