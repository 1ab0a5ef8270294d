"""The events topic's record (wire.event): JSON round trip and strict validation."""

from __future__ import annotations

import datetime as dt
import math

import orjson
import pytest

from wire.event import KINDS, Event, EventError, utc_now

pytestmark = pytest.mark.unit

TIME = "2025-01-01T12:00:00.000+00:00"


def good(**changes):
    doc = {"kind": "drift", "model": "gmm", "version": 3, "statistic": 12.5, "time": TIME}
    doc.update(changes)
    return doc


def test_known_kinds():
    assert {"drift", "shadow", "promoted", "rejected", "rollback"} <= KINDS


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("detail", [None, "mean log p fell from -2.31 to -2.81 (é)"])
def test_round_trip(kind, detail):
    event = Event(kind, "gmm-a", 7, -0.25, TIME, detail)
    raw = event.dumps()
    assert isinstance(raw, bytes) and raw.startswith(b'{"kind":"%s","model":' % kind.encode())
    assert Event.loads(raw) == event
    assert Event.loads(raw.decode()) == event
    assert ("detail" in orjson.loads(raw)) == (detail is not None)


def test_now_is_utc_iso_and_the_key_is_the_model_name():
    event = Event.now("drift", "gmm", 0, 13)
    assert isinstance(event.statistic, float) and event.statistic == 13.0
    stamp = dt.datetime.fromisoformat(event.time)
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
    assert event.key == b"gmm"
    assert dt.datetime.fromisoformat(utc_now()).tzinfo is not None


def test_z_suffix_and_null_detail_and_unknown_fields_are_accepted():
    raw = orjson.dumps(good(time="2025-01-01T12:00:00Z", detail=None, extra={"x": 1}))
    event = Event.loads(raw)
    assert event.detail is None and event.time == "2025-01-01T12:00:00Z"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", "JSON"),
        (b"{not json", "JSON"),
        (b'{"kind":"drift","model":"gmm","version":3,"statistic":NaN,"time":"x"}', "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "object"),
        (b'"drift"', "object"),
        (orjson.dumps({"kind": "drift"}), "missing"),
        (orjson.dumps(good(kind="exploded")), "kind"),
        (orjson.dumps(good(kind=None)), "kind"),
        (orjson.dumps(good(model="")), "model"),
        (orjson.dumps(good(model="   ")), "model"),
        (orjson.dumps(good(model=5)), "model"),
        (orjson.dumps(good(model="m" * 300)), "model"),
        (orjson.dumps(good(version=True)), "version"),
        (orjson.dumps(good(version=1.0)), "version"),
        (orjson.dumps(good(version="3")), "version"),
        (orjson.dumps(good(version=-1)), "version"),
        (orjson.dumps(good(statistic="12")), "statistic"),
        (orjson.dumps(good(statistic=None)), "statistic"),
        (orjson.dumps(good(statistic=False)), "statistic"),
        (b'{"kind":"drift","model":"gmm","version":3,"statistic":1e999,"time":"x"}', "JSON"),
        (orjson.dumps(good(time="yesterday")), "time"),
        (orjson.dumps(good(time="2025-01-01T12:00:00")), "UTC"),
        (orjson.dumps(good(time="2025-01-01T12:00:00+02:00")), "UTC"),
        (orjson.dumps(good(time=1735732800)), "time"),
        (orjson.dumps(good(detail=5)), "detail"),
        (orjson.dumps(good(detail="d" * 5000)), "detail"),
        (b" " * 70_000, "limit"),
        (None, "bytes"),
    ],
)
def test_bad_records_are_rejected_with_a_one_line_message(raw, field):
    with pytest.raises(EventError) as info:
        Event.loads(raw)
    message = str(info.value)
    assert field in message and "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("statistic", [math.nan, math.inf, -math.inf])
def test_an_event_with_a_non_finite_statistic_cannot_be_made(statistic):
    with pytest.raises(EventError, match="statistic"):
        Event("drift", "gmm", 1, statistic, TIME)


def test_events_are_frozen():
    event = Event("drift", "gmm", 1, 1.0, TIME)
    with pytest.raises(AttributeError):
        event.version = 2  # type: ignore[misc]
