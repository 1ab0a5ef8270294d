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

from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

from wire.common import (
    KeyCut,
    SourceRef,
    WireError,
    add_key_cut,
    decode_object,
    dumps,
    dumps_each,
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
    doc: dict[str, Any] = {
        "id": point_id,
        "x": x[0] if scalar else x,
        "assignment": assignment,
        "probs": probs,
        "log_likelihood": log_likelihood,
        "model": model,
        "model_version": model_version,
        "ts_in": ts_in,
        "ts_out": ts_out,
        "source": source,
    }
    if None in x:
        doc["missing"] = [j for j, v in enumerate(x) if v is None]
    return dumps(doc, key_cut)


#: One assignment of `encode_many`: the arguments of `encode` that differ between records.
Row = tuple[
    str | int,  # id
    list[Any],  # x as decoded
    bool,  # scalar
    int,  # assignment
    list[float],  # probs
    float,  # log_likelihood
    float | None,  # ts_in
    SourceRef | None,
    KeyCut | None,
]


def encode_many(rows: Sequence[Row], model: str, model_version: int, ts_out: float) -> list[bytes]:
    """The assignments of one classified slice, as `encode` gives each (same bytes): one orjson
    call for all of them, which halves the per-record cost of encoding at stream rates."""
    docs: list[dict[str, Any]] = [
        {
            "id": point_id,
            "x": x[0] if scalar else x,
            "assignment": assignment,
            "probs": probs,
            "log_likelihood": log_likelihood,
            "model": model,
            "model_version": model_version,
            "ts_in": ts_in,
            "ts_out": ts_out,
            "source": source,
        }
        for point_id, x, scalar, assignment, probs, log_likelihood, ts_in, source, _ in rows
    ]
    # Rare: the optional fields, in encode's order.
    for i in [i for i, row in enumerate(rows) if row[8] is not None or None in row[1]]:
        x, doc = rows[i][1], docs[i]
        if None in x:
            doc["missing"] = [j for j, v in enumerate(x) if v is None]
        add_key_cut(doc, rows[i][8])
    return dumps_each(docs, "id")


def decode(value: bytes | str) -> AssignmentRecord:
    """An assignment record, checked field by field (WireError says what is wrong)."""
    doc = decode_object(value, WHAT, FIELDS, source_optional=True)
    if not 0 <= doc["assignment"] < len(doc["probs"]):
        raise WireError(f"{WHAT}: assignment {doc['assignment']} is not a component of probs")
    return doc  # type: ignore[return-value]
