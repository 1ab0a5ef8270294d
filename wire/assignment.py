"""The assignment record: the output topic's records (`GMM_OUTPUT_TOPIC`, same Kafka key as the
input record) and `gmm-classify`'s output lines.

    {"id": "p-1", "x": 4.2, "assignment": 1, "probs": [0.02, 0.98], "log_likelihood": -2.1,
     "model": "gmm", "model_version": 7, "ts_in": 1733131200.5, "ts_out": 1733131200.51,
     "source": {"topic": "points", "partition": 0, "offset": 42}}

`missing` (indices of null coordinates) appears only when some were missing; `key_size`,
`key_sha256` and `key_truncated` only when the input's key was cut. Offline (`gmm-classify`)
`source` and `ts_in` are null and `id` defaults to the line number.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple, NotRequired, Protocol, TypedDict

import numpy as np
import orjson

from wire.common import (
    KeyCut,
    SourceRef,
    WireError,
    add_key_cut,
    decode_object,
    exact_size,
)

#: The fields every record has, and their JSON types (checked by `decode`).
FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str, int),
    "x": (int, float, list),
    "assignment": (int,),
    "probs": (list,),
    "log_likelihood": (int, float),
    "model": (str,),
    "model_version": (int,),
    "ts_in": (int, float, type(None)),
    "ts_out": (int, float),
}
WHAT = "assignment record"


class AssignmentRecord(TypedDict):
    """The input's id (or topic:partition:offset) and x, and the model's verdict."""

    id: str | int
    x: float | list[float | None]  # None: a missing coordinate (null), marginalised out
    assignment: int
    probs: list[float]
    log_likelihood: float
    model: str  # the model's name (GMM_MODEL_NAME)
    model_version: int
    ts_in: float | None  # the input record's Kafka timestamp, seconds since the epoch
    ts_out: float  # when the assignment was produced
    source: SourceRef | None  # the input record; null offline
    missing: NotRequired[list[int]]  # indices of the missing coordinates, only when there are
    key_size: NotRequired[int]  # the input key's size, when it was cut
    key_sha256: NotRequired[str]
    key_truncated: NotRequired[bool]


def encode(
    point_id: str | int,
    x: list[Any],
    scalar: bool,
    assignment: int,
    probs: list[float],
    log_likelihood: float,
    model: str,
    model_version: int,
    ts_in: float | None,
    ts_out: float,
    source: SourceRef | None,
    key_cut: KeyCut | None = None,
) -> bytes:
    """One assignment as JSON bytes. `x` is the point as decoded (None: missing), `scalar`
    whether it was sent as a bare number (it is echoed the same way)."""
    one = _One(ts_in, key_cut, x, scalar)
    return encode_many(
        [(one, one)], [point_id], [source], [assignment], [probs], [log_likelihood], model,
        model_version, ts_out,
    )[0]  # fmt: skip


class _One(NamedTuple):
    """One record's fields, as `encode_many` reads them of an input record and its point."""

    timestamp: float | None
    key_cut: KeyCut | None
    x: list[Any]
    scalar: bool


class Answered(Protocol):
    """What `encode_many` reads of an input record (the worker's InRecord has it)."""

    @property
    def timestamp(self) -> float | None: ...
    @property
    def key_cut(self) -> KeyCut | None: ...


class Decoded(Protocol):
    """What `encode_many` reads of a decoded point (mixture.points.Point has it)."""

    @property
    def x(self) -> list[Any]: ...
    @property
    def scalar(self) -> bool: ...


def encode_many(
    answered: Sequence[tuple[Answered, Decoded]],
    ids: Sequence[str | int],
    sources: Sequence[SourceRef | None],
    assignments: Sequence[int],
    probs: Sequence[list[float]],
    log_likelihoods: Sequence[float],
    model: str,
    model_version: int,
    ts_out: float,
) -> list[bytes]:
    """The assignments of one classified slice (`encode` is the one-record case):
    for each (input record, its point) of `answered`, with that row of the other columns.

    One orjson call for the whole slice (`_dumps_each`) and no tuple per record on the way:
    at stream rates this is most of what encoding costs (see bench/results/stream.md).
    """
    docs: list[dict[str, Any]] = [
        {
            "id": point_id,
            "x": p.x[0] if p.scalar else p.x,
            "assignment": assignment,
            "probs": row_probs,
            "log_likelihood": log_likelihood,
            "model": model,
            "model_version": model_version,
            "ts_in": r.timestamp,
            "ts_out": ts_out,
            "source": source,
        }
        for (r, p), point_id, source, assignment, row_probs, log_likelihood in zip(
            answered, ids, sources, assignments, probs, log_likelihoods, strict=True
        )
    ]
    # Rare: the optional fields, in encode's order.
    for i in [i for i, (r, p) in enumerate(answered) if r.key_cut is not None or None in p.x]:
        (r, p), doc = answered[i], docs[i]
        if None in p.x:
            doc["missing"] = [j for j, v in enumerate(p.x) if v is None]
        add_key_cut(doc, r.key_cut)
    return _dumps_each(docs)


def _dumps_each(docs: list[dict[str, Any]]) -> list[bytes]:
    """Each assignment doc as compact JSON, as `dumps` gives it, in one orjson call.

    The joined array is cut where `{"id":` begins. Every doc here starts with "id" and no
    object nested in one does (`source` starts with "topic"), and inside a JSON string every `"`
    is escaped, so the mark is each doc's start and nothing else; this holds for these docs
    only, which is why the cut lives here. Each value is its own exact-size copy, as
    `exact_size` makes. For 1,024 of the worker's assignments: 0.33 us a record, against 0.37
    for a call and a copy per doc.
    """
    if not docs:
        return []
    joined = orjson.dumps(docs)
    raw = np.frombuffer(joined, np.uint8)
    starts = np.flatnonzero(raw[: len(raw) - len(_MARK)] == _MARK[0])
    for i, byte in enumerate(_MARK[1:], 1):  # a few candidates ({ of `source`) fail here
        starts = starts[raw[starts + i] == byte]
    cuts = starts.tolist()
    if len(cuts) != len(docs) or cuts[0] != 1:  # cannot happen (see above); never cut wrong
        return [exact_size(orjson.dumps(doc)) for doc in docs]
    cuts.append(len(joined))  # each doc ends one byte before the next starts (, or ])
    return [joined[a : b - 1] for a, b in itertools.pairwise(cuts)]


_MARK = b'{"id":'


def decode(value: bytes | str) -> AssignmentRecord:
    """An assignment record, checked field by field (WireError says what is wrong)."""
    doc = decode_object(value, WHAT, FIELDS, source_optional=True)
    if not 0 <= doc["assignment"] < len(doc["probs"]):
        raise WireError(f"{WHAT}: assignment {doc['assignment']} is not a component of probs")
    return doc  # type: ignore[return-value]
