"""One set of rules for what a data point is, shared by the worker, the trainer and the CLIs.

A point arrives as JSON `{"id": ..., "x": number | [numbers]}`. Anything else is rejected with a
`PointError` whose `reason` is a short, stable code (used as a metric label and in dead-letter
records) and whose message says what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np

#: Stable reason codes, in the order checks run.
REASONS = (
    "oversized",
    "not_json",
    "not_object",
    "missing_x",
    "not_numeric",
    "not_finite",
    "out_of_range",
    "wrong_dim",
    "bad_id",
    "not_classifiable",  # valid, but the model's arithmetic overflowed on it (set by the worker)
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
    x: np.ndarray  # (D,) float64
    scalar: bool  # x was sent as a bare number


def parse_x(value: Any, dim: int | None = None) -> tuple[np.ndarray, bool]:
    """Validates an `x` value: a finite number, or a non-empty list of finite numbers."""
    scalar = not isinstance(value, list)
    items = [value] if scalar else value
    if not items:
        raise PointError("not_numeric", "x is an empty list")
    for item in items:
        # bool is an int subclass in Python, but true/false are not coordinates.
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise PointError(
                "not_numeric", f"x must be a number or a list of numbers, got {item!r:.40}"
            )
    if not all(math.isfinite(v) for v in items):
        raise PointError("not_finite", "x contains NaN or infinity")
    if any(abs(v) > MAX_ABS for v in items):
        raise PointError("out_of_range", f"x has a coordinate beyond +-{MAX_ABS:g}")
    if dim is not None and len(items) != dim:
        raise PointError("wrong_dim", f"x has {len(items)} dimension(s), the model has {dim}")
    return np.asarray(items, dtype=np.float64), scalar


def parse_point(obj: Any, dim: int | None = None) -> Point:
    """Validates a decoded JSON value as a point."""
    if not isinstance(obj, dict):
        raise PointError("not_object", f"a point must be a JSON object, got {type(obj).__name__}")
    if "x" not in obj:
        raise PointError("missing_x", "the object has no 'x' field")
    point_id = obj.get("id")
    if point_id is not None and (isinstance(point_id, bool) or not isinstance(point_id, str | int)):
        raise PointError("bad_id", f"id must be a string or an integer, got {point_id!r:.40}")
    x, scalar = parse_x(obj["x"], dim)
    return Point(point_id, x, scalar)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


#: Strict JSON (NaN and Infinity rejected); one decoder, since json.loads with options builds
#: a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_point(
    raw: bytes | str, dim: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Point:
    """Decodes and validates one record's bytes (strict JSON: NaN and Infinity are rejected)."""
    if len(raw) > max_bytes:
        raise PointError("oversized", f"record is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        obj = _DECODER.decode(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PointError("not_json", f"not valid JSON: {str(exc)[:80]}") from None
    return parse_point(obj, dim)


def x_to_json(x: np.ndarray, scalar: bool) -> float | list[float]:
    """The point's x as it was sent: a bare number or a list."""
    return float(x[0]) if scalar else [float(v) for v in x]
