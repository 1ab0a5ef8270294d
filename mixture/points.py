"""One set of rules for what a data point is, shared by the worker, the trainer and the CLIs.

A point arrives as JSON `{"id": ..., "x": number | [numbers]}`; in D >= 2 a coordinate may be
`null` (missing: the classifier marginalises it out). Anything else is rejected with a
`PointError` whose `reason` is a short, stable code (used as a metric label and in dead-letter
records) and whose message says what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import orjson

#: Stable reason codes, in the order checks run.
REASONS = (
    "tombstone",  # the record has a null value (Kafka's tombstone): no point at all
    "undecodable",  # records of a batch the client could not read (set by the Kafka readers)
    "oversized",
    "not_json",
    "not_object",
    "missing_x",
    "not_numeric",
    "not_finite",
    "out_of_range",
    "wrong_dim",
    "no_observed_values",  # every coordinate of x is null (missing)
    "bad_id",
    "not_classifiable",  # valid, but the model's arithmetic overflowed on it (set by the worker)
    "output_too_large",  # its output was larger than the broker takes (set by the worker)
    "output_rejected",  # the broker refused its output for another reason (set by the worker)
)

DEFAULT_MAX_BYTES = 64 * 1024
#: Coordinates beyond this are rejected: the classifier computes in float32 (max ~3.4e38), and
#: squared distances of larger values overflow.
MAX_ABS = 1e15


class PointError(ValueError):
    """A record that is not a valid point; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Point(NamedTuple):
    id: Any  # str | int | None, as sent
    x: list[Any]  # (D,) coordinates as sent: numbers (integers stay integers), None if missing
    scalar: bool  # x was sent as a bare number


def parse_x(value: Any, dim: int | None = None) -> tuple[list[float], bool]:
    """Validates an `x` value: a finite number, or a non-empty list of finite numbers in which
    some (not all) coordinates may be null when there are two or more."""
    scalar = not isinstance(value, list)
    items = [value] if scalar else value
    if not items:
        raise PointError("not_numeric", "x is an empty list")
    if value is None or None in items:
        observed = [v for v in items if v is not None]
        if not observed:
            raise PointError("no_observed_values", "every coordinate of x is null (missing)")
        if len(items) < 2:
            raise PointError("not_numeric", "x is null")
        parse_x(observed)  # the observed coordinates must be finite numbers in range
        if dim is not None and len(items) != dim:
            raise PointError("wrong_dim", f"x has {len(items)} dimension(s), the model has {dim}")
        return items, scalar
    for item in items:
        # bool is an int subclass in Python, but true/false are not coordinates.
        if type(item) is not float and (
            isinstance(item, bool) or not isinstance(item, int | float)
        ):
            raise PointError(
                "not_numeric", f"x must be a number or a list of numbers, got {item!r:.40}"
            )
    for item in items:
        if not -MAX_ABS <= item <= MAX_ABS:  # NaN fails every comparison
            if all(isinstance(v, int) or math.isfinite(v) for v in items):  # ints may be huge
                raise PointError("out_of_range", f"x has a coordinate beyond +-{MAX_ABS:g}")
            raise PointError("not_finite", "x contains NaN or infinity")
    if dim is not None and len(items) != dim:
        raise PointError("wrong_dim", f"x has {len(items)} dimension(s), the model has {dim}")
    return items, scalar


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (about 2x faster)


def _fast_point(obj: Any, dim: int | None) -> Point | None:
    """The common, valid shapes, checked in a few type tests; None: let parse_point decide.

    Streams carry tens of thousands of points a second, nearly all valid: this accepts only
    what parse_point accepts (an object whose id is a string, an integer or absent, and whose
    x is a number or a non-empty list of floats, all within range) and is tested against it.
    """
    if type(obj) is not dict:
        return None
    point_id = obj.get("id")
    if not (point_id is None or type(point_id) is str or type(point_id) is int):
        return None
    x = obj.get("x")
    kind = type(x)
    if kind is float or kind is int:
        if (dim is None or dim == 1) and -MAX_ABS <= x <= MAX_ABS:  # type: ignore[operator]
            return _new(Point, (point_id, [x], True))
    elif kind is list and x and (dim is None or len(x) == dim):
        for v in x:
            if type(v) is not float or not -MAX_ABS <= v <= MAX_ABS:
                return None
        return _new(Point, (point_id, x, False))
    return None


def parse_point(obj: Any, dim: int | None = None) -> Point:
    """Validates a decoded JSON value as a point."""
    fast = _fast_point(obj, dim)
    if fast is not None:
        return fast
    return _parse_point_fully(obj, dim)


def _parse_point_fully(obj: Any, dim: int | None) -> Point:
    if not isinstance(obj, dict):
        raise PointError("not_object", f"a point must be a JSON object, got {type(obj).__name__}")
    if "x" not in obj:
        raise PointError("missing_x", "the object has no 'x' field")
    point_id = obj.get("id")
    if point_id is not None and (isinstance(point_id, bool) or not isinstance(point_id, str | int)):
        raise PointError("bad_id", f"id must be a string or an integer, got {point_id!r:.40}")
    x, scalar = parse_x(obj["x"], dim)
    return Point(point_id, x, scalar)


def decode_point(
    raw: bytes | str, dim: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Point:
    """Decodes and validates one record's bytes (strict JSON: NaN and Infinity are rejected).

    orjson is strict RFC 8259 (no NaN or Infinity tokens, valid UTF-8, paired surrogates) and
    about ten times faster than the standard library, which matters at stream rates. Integers
    beyond 64 bits are read as floats, so such an id is rejected as `bad_id`.
    """
    if len(raw) > max_bytes:
        raise PointError("oversized", f"record is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "infinity" in message:  # a literal such as 1e999 overflows a double
            raise PointError("not_finite", "x contains a number too large for a double") from None
        if _has_nan_token(raw):
            raise PointError("not_finite", "x contains NaN or Infinity (not JSON)") from None
        raise PointError("not_json", f"not valid JSON: {message[:80]}") from None
    return parse_point(obj, dim)


class _NanToken(Exception):
    pass


def _nan_token(_: str) -> Any:
    raise _NanToken


def _has_nan_token(raw: bytes | str) -> bool:
    """Whether the (already rejected) record is JSON but for a NaN or Infinity token: the
    standard library reads those, and calls parse_constant for each."""
    try:
        json.loads(raw, parse_constant=_nan_token)
    except _NanToken:
        return True
    except (ValueError, RecursionError):
        pass
    return False
