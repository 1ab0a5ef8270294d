"""One micro-batch: validate, classify, encode. No Faust, no I/O: the agent sends the results.

Runs in the inference thread, off the event loop. Every input record yields exactly one
outgoing record: an assignment, or a dead letter with the reason.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any, NamedTuple

import numpy as np
import orjson

from mixture.points import Point, PointError, decode_point, x_to_json
from stream_app.model_state import ServingModel
from stream_app.topics import AssignmentRecord, DeadLetterRecord, SourceRef


class InRecord(NamedTuple):
    """What the batch needs of a consumed Kafka record."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds since the epoch


class Outgoing(NamedTuple):
    key: bytes | None
    value: bytes
    ts_in: float | None
    partition: int  # the input's: outputs stay co-partitioned with their inputs


class BatchOutcome(NamedTuple):
    assignments: list[Outgoing]
    dead_letters: list[Outgoing]
    components: np.ndarray  # assignment of each delivered output, for the per-component counter
    input_times: np.ndarray  # each assignment's input timestamp (s), NaN where unknown
    reasons: list[str]  # one per dead letter
    inference_seconds: float
    log_likelihood_sum: float
    model_version: int


def _source(r: InRecord) -> SourceRef:
    return {"topic": r.topic, "partition": r.partition, "offset": r.offset}


def dead_letter(r: InRecord, reason: str, error: str) -> Outgoing:
    payload = r.value or b""
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    doc: DeadLetterRecord = {
        "reason": reason,
        "error": error,
        "source": _source(r),
        "ts_in": r.timestamp,
        "payload_base64": base64.b64encode(payload).decode("ascii"),
        "payload_text": text,
    }
    return Outgoing(r.key, orjson.dumps(doc), r.timestamp, r.partition)


def process_batch(
    records: list[InRecord], serving: ServingModel, max_record_bytes: int, key: Any = None
) -> BatchOutcome:
    """Classifies the valid records of a batch and dead-letters the rest, in input order."""
    dim = serving.model.mixture.dim
    valid: list[tuple[InRecord, Point]] = []
    dead: list[Outgoing] = []
    reasons: list[str] = []
    for r in records:
        try:
            if r.value is None:
                raise PointError("not_json", "the record has no value")
            valid.append((r, decode_point(r.value, dim, max_record_bytes)))
        except PointError as exc:
            dead.append(dead_letter(r, exc.reason, str(exc)))
            reasons.append(exc.reason)

    if not valid:
        return BatchOutcome(
            [], dead, np.zeros(0, np.int32), np.zeros(0), reasons, 0.0, 0.0, serving.model.version
        )
    points = np.array([p.x for _, p in valid], dtype=np.float64)
    t0 = time.perf_counter()
    result = serving.classifier(points, serving.device_params, key)
    inference = time.perf_counter() - t0
    ts_out = time.time()
    version = serving.model.version
    # A point far from every component can overflow the model's float32 arithmetic; it gets a
    # dead letter rather than NaN in an output (JSON has no NaN).
    finite = np.isfinite(result.log_likelihood) & np.all(np.isfinite(result.probs), axis=1)
    assignments = result.assignment.tolist()
    probs = result.probs.tolist()
    loglik = result.log_likelihood.tolist()
    out = []
    all_finite = bool(finite.all())
    for i, (r, p) in enumerate(valid):
        if not all_finite and not finite[i]:
            dead.append(
                dead_letter(
                    r, "not_classifiable", "the model's probabilities for this point are not finite"
                )
            )
            reasons.append("not_classifiable")
            continue
        doc: AssignmentRecord = {
            "id": p.id if p.id is not None else f"{r.topic}:{r.partition}:{r.offset}",
            "x": x_to_json(p.x, p.scalar),
            "assignment": assignments[i],
            "probs": probs[i],
            "log_likelihood": loglik[i],
            "model_version": version,
            "ts_in": r.timestamp,
            "ts_out": ts_out,
            "source": _source(r),
        }
        out.append(Outgoing(r.key, orjson.dumps(doc), r.timestamp, r.partition))
    return BatchOutcome(
        out,
        dead,
        result.assignment[finite],
        np.array([math.nan if o.ts_in is None else o.ts_in for o in out], dtype=np.float64),
        reasons,
        inference,
        float(np.sum(result.log_likelihood[finite])),
        version,
    )
