"""The event record: what happened to a model (a drift alarm, a promotion, ...).

The one definition of the events topic's record, its validation, encoder (`Event.dumps`) and
decoder (`Event.loads`), for its writers (the worker's drift and shadow events, the trainer's
promotions, rejections and rollbacks) and its reader (the trainer). Sending is Kafka's side:
`kafka_common.events`.

One record per event, JSON (never pickle), keyed by the model name (`Event.key`):

    {"kind":"drift","model":"gmm","version":3,"statistic":12.4,
     "time":"2025-01-01T12:00:00.000+00:00","detail":"..."}

`detail` is optional (absent or null), and so is `data`: a flat object of numbers and short
strings (a worker's shadow totals for `shadow` events: `wire.shadow_report`). Readers validate
every field and ignore fields they do not know, so a newer writer may add some.

A worker with GMM_EVENTS_SIGNING_KEY signs each record (key and value) in a header; the value
stays as above. The signature and what it covers are `kafka_common.event_signing`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

import orjson

#: Known kinds: a drift alarm and shadow scores (workers), a candidate promoted or rejected,
#: a rollback (trainer).
KINDS = frozenset({"drift", "shadow", "promoted", "rejected", "rollback"})
#: At most this many entries in `data`.
MAX_DATA_ENTRIES = 32

#: Limits on what a reader accepts (a record is small: a few hundred bytes).
MAX_RECORD_BYTES = 64 * 1024
MAX_NAME_CHARS = 256
MAX_DETAIL_CHARS = 4096


class EventError(ValueError):
    """An event that is not valid; the message (one line) says which field and why."""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (milliseconds, +00:00)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass(frozen=True)
class Event:
    """One event. Constructing it validates it (`EventError` on a bad field).

    kind: one of KINDS. model: the model name. version: the model version it is about (>= 0).
    statistic: a finite number (a drift alarm's Page-Hinkley statistic; for other kinds what
    the writer documents, e.g. a shadow log-likelihood difference). time: ISO-8601 with a UTC
    offset. detail: free text, optional. data: a flat object of at most MAX_DATA_ENTRIES
    finite numbers and short strings, optional.
    """

    kind: str
    model: str
    version: int
    statistic: float
    time: str
    detail: str | None = None
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise EventError(f"kind must be one of {sorted(KINDS)}, got {_short(self.kind)}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise EventError(f"model must be a non-empty string, got {_short(self.model)}")
        if len(self.model) > MAX_NAME_CHARS:
            raise EventError(f"model must be at most {MAX_NAME_CHARS} characters")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise EventError(f"version must be an integer, got {_short(self.version)}")
        if self.version < 0:
            raise EventError(f"version must be >= 0, got {self.version}")
        stat = self.statistic
        if isinstance(stat, bool) or not isinstance(stat, int | float) or not math.isfinite(stat):
            raise EventError(f"statistic must be a finite number, got {_short(stat)}")
        object.__setattr__(self, "statistic", float(stat))
        _check_time(self.time)
        if self.detail is not None:
            if not isinstance(self.detail, str):
                raise EventError(f"detail must be a string or null, got {_short(self.detail)}")
            if len(self.detail) > MAX_DETAIL_CHARS:
                raise EventError(f"detail must be at most {MAX_DETAIL_CHARS} characters")
        if self.data is not None:
            _check_data(self.data)

    @classmethod
    def now(
        cls,
        kind: str,
        model: str,
        version: int,
        statistic: float,
        detail: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        """An event stamped with the current UTC time."""
        return cls(kind, model, version, statistic, utc_now(), detail, data)

    @property
    def key(self) -> bytes:
        """The record key: the model name (UTF-8)."""
        return self.model.encode()

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the record (`detail` and `data` only when set)."""
        doc: dict[str, Any] = {
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "statistic": self.statistic,
            "time": self.time,
        }
        if self.detail is not None:
            doc["detail"] = self.detail
        if self.data is not None:
            doc["data"] = self.data
        return doc

    def dumps(self) -> bytes:
        """Compact JSON (UTF-8)."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> Event:
        """Validates a parsed record; unknown fields are ignored (`EventError` otherwise)."""
        if not isinstance(obj, dict):
            raise EventError(f"an event must be a JSON object, got {type(obj).__name__}")
        missing = [f for f in ("kind", "model", "version", "statistic", "time") if f not in obj]
        if missing:
            raise EventError(f"missing field(s): {', '.join(missing)}")
        return cls(
            obj["kind"],
            obj["model"],
            obj["version"],
            obj["statistic"],
            obj["time"],
            obj.get("detail"),
            obj.get("data"),
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Event:
        """Parses and validates one record (strict JSON: NaN and Infinity are rejected)."""
        if raw is None or not isinstance(raw, bytes | bytearray | memoryview | str):
            raise EventError(f"an event must be bytes or str, got {type(raw).__name__}")
        if len(raw) > MAX_RECORD_BYTES:
            raise EventError(f"record is {len(raw)} bytes, the limit is {MAX_RECORD_BYTES}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid"
            raise EventError(f"not valid JSON: {first[:80]}") from None
        return cls.from_json(obj)


def _check_data(data: Any) -> None:
    if not isinstance(data, dict) or len(data) > MAX_DATA_ENTRIES:
        raise EventError(f"data must be an object of at most {MAX_DATA_ENTRIES} entries")
    for key, value in data.items():
        if not isinstance(key, str) or len(key) > MAX_NAME_CHARS:
            raise EventError(f"data keys must be short strings, got {_short(key)}")
        if isinstance(value, str):
            if len(value) > MAX_NAME_CHARS:
                raise EventError(f"data[{key!r}] must be at most {MAX_NAME_CHARS} characters")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value))
        ):
            raise EventError(f"data[{key!r}] must be a finite number or a string")


def _check_time(value: Any) -> None:
    if not isinstance(value, str):
        raise EventError(f"time must be an ISO-8601 string, got {_short(value)}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise EventError(f"time must be ISO-8601, got {_short(value)}") from None
    if parsed.tzinfo is None or parsed.utcoffset() != dt.timedelta(0):
        raise EventError(f"time must be in UTC (Z or +00:00), got {_short(value)}")
