"""One slice of a micro-batch: validate, classify, encode. No Faust, no I/O: the worker sends
the results. Every input record yields exactly one outgoing record: an assignment, or a dead
letter with the reason.

The three steps are separate functions because they run on different threads: validating and
encoding are short Python loops that the worker runs on its event loop, and only the JAX call
(`classify_slice`) goes to the inference thread. With all three on the inference thread, it and
the event loop contended for the GIL on every slice, each waiting up to the interpreter's
switch interval (5 ms) for the other.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import orjson

from mixture.classify import Classification
from mixture.points import Point, PointError, decode_point

if TYPE_CHECKING:  # types only: this module runs without Faust (bench/device uses it so)
    from stream_app.model_state import ServingModel
    from stream_app.topics import AssignmentRecord, DeadLetterRecord, SourceRef


class KeyCut(NamedTuple):
    """What is kept of a key too long to carry: its whole size and SHA-256 (the record's key
    becomes its first bytes)."""

    size: int
    sha256: str


class InRecord(NamedTuple):
    """What the batch needs of a consumed Kafka record (its headers are never needed)."""

    key: bytes | None  # at most GMM_MAX_KEY_BYTES: a longer one is cut (see key_cut)
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds since the epoch
    key_cut: KeyCut | None = None  # set when the key was cut
    #: Set on a stand-in for records the client could not read (kafka_common.record_batches):
    #: why, and which offsets it covers.
    undecodable: str | None = None


def cut_key(key: bytes, max_bytes: int) -> tuple[bytes, KeyCut | None]:
    """The key as outputs carry it: as it is when at most `max_bytes`, else its first
    `max_bytes` bytes and a KeyCut.

    Outputs carry their input's key, and the broker refuses a record (an assignment, or even a
    small dead letter) whose key is near its size limit: a key cut the way payloads are makes
    every output of any input fit.
    """
    if len(key) <= max_bytes:
        return key, None
    return key[:max_bytes], KeyCut(len(key), hashlib.sha256(key).hexdigest())


def _key_fields(doc: dict, cut: KeyCut | None) -> None:
    if cut is not None:
        doc.update(key_size=cut.size, key_sha256=cut.sha256, key_truncated=True)


class Outgoing(NamedTuple):
    """One output record: an assignment for the output topic or a dead letter for the DLQ."""

    key: bytes | None
    value: bytes
    ts_in: float | None
    partition: int  # the input's: outputs stay co-partitioned with their inputs
    dead_letter: bool  # True: for the dead-letter topic
    source: SourceRef  # the input record it answers
    reason: str | None = None  # a dead letter's reason
    component: int = -1  # an assignment's component
    key_cut: KeyCut | None = None  # the input's key was cut (see cut_key)


class BatchOutcome(NamedTuple):
    assignments: list[Outgoing]
    dead_letters: list[Outgoing]
    components: np.ndarray  # assignment of each delivered output, for the per-component counter
    input_times: np.ndarray  # each assignment's input timestamp (s), NaN where unknown
    inference_seconds: float
    log_likelihood_sum: float
    model_version: int

    @property
    def outputs(self) -> list[Outgoing]:
        return self.assignments + self.dead_letters

    @property
    def reasons(self) -> list[str]:
        """Each dead letter's reason, in order."""
        return [o.reason or "" for o in self.dead_letters]


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (about 2x faster)

#: orjson returns its whole working buffer, sized for the worst-case escaping of every string
#: (519 KB for a 60 KB output), and an output is held until the broker acknowledges it: past
#: this size an output is copied to its exact size (bench/results/memory.md).
_EXACT_ABOVE = 2048


def _json(doc: object) -> bytes:
    value = orjson.dumps(doc)
    return bytes(memoryview(value)) if len(value) > _EXACT_ABOVE else value


def _source(r: InRecord) -> SourceRef:
    return {"topic": r.topic, "partition": r.partition, "offset": r.offset}


def _text_prefix(prefix: bytes, truncated: bool) -> str | None:
    """The prefix as text if it is UTF-8; a character cut by the truncation is dropped."""
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data":
            return prefix[: exc.start].decode("utf-8")
        return None


def dead_letter(r: InRecord, reason: str, error: str, payload_bytes: int) -> Outgoing:
    """A dead letter of bounded size: at most `payload_bytes` of the payload travel with it.

    The whole payload's size and SHA-256 are kept, so a record of any size the broker accepted
    gets one dead letter that the broker also accepts (a copy of the payload, twice, would not).
    """
    payload = r.value or b""
    prefix = payload[:payload_bytes]
    doc: DeadLetterRecord = {
        "reason": reason,
        "error": error,
        "source": _source(r),
        "ts_in": r.timestamp,
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_truncated": len(prefix) < len(payload),
        "payload_base64": base64.b64encode(prefix).decode("ascii"),
        "payload_text": _text_prefix(prefix, len(prefix) < len(payload)),
    }
    _key_fields(doc, r.key_cut)  # type: ignore[arg-type]
    return Outgoing(
        r.key, _json(doc), r.timestamp, r.partition, True, _source(r), reason, -1, r.key_cut
    )


def refused_letter(out: Outgoing, reason: str, error: str) -> Outgoing:
    """The small dead letter that stands in for an output the broker would not take
    (`reason`: output_too_large or output_rejected).

    It keeps the input's coordinates (so the record can be found and replayed), the rejected
    output's size and SHA-256, and a rejected dead letter's original reason.
    """
    doc: DeadLetterRecord = {
        "reason": reason,
        "error": error[:500],
        "source": out.source,
        "ts_in": out.ts_in,
        "payload_size": len(out.value),
        "payload_sha256": hashlib.sha256(out.value).hexdigest(),
        "payload_truncated": True,
        "payload_base64": "",
        "payload_text": None,
    }
    if out.dead_letter and out.reason is not None:
        doc["original_reason"] = out.reason
    _key_fields(doc, out.key_cut)  # type: ignore[arg-type]
    return Outgoing(
        out.key,
        _json(doc),
        out.ts_in,
        out.partition,
        True,
        out.source,
        reason,
        -1,
        out.key_cut,
    )


class ParsedSlice(NamedTuple):
    """A slice after validation: its valid points ready for the classifier, its dead letters."""

    valid: list[tuple[InRecord, Point]]
    dead: list[Outgoing]
    points: np.ndarray  # (N, D) float64, one row per valid record
    keys: np.ndarray | None  # (N, 2) uint32 per-record keys at temperature 1


def parse_slice(
    records: list[InRecord],
    dim: int,
    max_record_bytes: int,
    temperature: int = 0,
    seed: int | None = None,
    dlq_payload_bytes: int = 4096,
) -> ParsedSlice:
    """Validates a slice's records against a model of dimension `dim` (no JAX work).

    At temperature 1 each valid record gets its own key, `record_keys(seed, ...)`: a function
    of the record's Kafka coordinates, so a replayed record draws the same assignment.
    """
    valid: list[tuple[InRecord, Point]] = []
    dead: list[Outgoing] = []
    for r in records:
        try:
            if r.value is None:
                if r.undecodable is not None:
                    raise PointError("undecodable", r.undecodable)
                raise PointError("tombstone", "the record has a null value (a tombstone)")
            valid.append((r, decode_point(r.value, dim, max_record_bytes)))
        except PointError as exc:
            dead.append(dead_letter(r, exc.reason, str(exc), dlq_payload_bytes))
    points = np.array([p.x for _, p in valid], dtype=np.float64).reshape(len(valid), dim)
    keys = None
    if temperature == 1 and valid:
        if seed is None:
            raise ValueError("temperature 1 needs a seed")
        keys = record_keys(seed, [r for r, _ in valid])
    return ParsedSlice(valid, dead, points, keys)


def classify_slice(parsed: ParsedSlice, serving: ServingModel) -> tuple[Classification, float]:
    """The JAX part: the served model's classifier on the slice's points, and its seconds."""
    t0 = time.perf_counter()
    result = serving.classifier(parsed.points, serving.device_params, keys=parsed.keys)
    return result, time.perf_counter() - t0


def encode_slice(
    parsed: ParsedSlice,
    result: Classification | None,
    version: int,
    inference_seconds: float = 0.0,
    dlq_payload_bytes: int = 4096,
    max_output_bytes: int = 1_000_000,
    model_name: str = "gmm",
) -> BatchOutcome:
    """Turns a classified slice into its outgoing records, one per input record.

    An output larger than `max_output_bytes` is replaced by an `output_too_large` dead letter.
    """
    valid, dead = parsed.valid, list(parsed.dead)
    if result is None or not valid:
        return BatchOutcome([], dead, np.zeros(0, np.int32), np.zeros(0), 0.0, 0.0, version)
    ts_out = time.time()
    # A point whose results overflowed float32 gets a dead letter, not NaN in an output (JSON
    # has no NaN).
    finite = result.finite()
    assignments = result.assignment.tolist()
    probs = result.probs.tolist()
    loglik = result.log_likelihood.tolist()
    out = []
    served = finite.copy()  # which valid points get an assignment
    all_finite = bool(finite.all())
    for i, (r, p) in enumerate(valid):
        if not all_finite and not finite[i]:
            dead.append(
                dead_letter(
                    r,
                    "not_classifiable",
                    "the model's probabilities for this point are not finite",
                    dlq_payload_bytes,
                )
            )
            continue
        source = {"topic": r.topic, "partition": r.partition, "offset": r.offset}
        a = assignments[i]
        doc: AssignmentRecord = {
            "id": p.id if p.id is not None else f"{r.topic}:{r.partition}:{r.offset}",
            "x": p.x[0] if p.scalar else p.x,
            "assignment": a,
            "probs": probs[i],
            "log_likelihood": loglik[i],
            "model": model_name,
            "model_version": version,
            "ts_in": r.timestamp,
            "ts_out": ts_out,
            "source": source,  # type: ignore[typeddict-item]
        }
        if None in p.x:
            doc["missing"] = [j for j, v in enumerate(p.x) if v is None]
        if r.key_cut is not None:
            _key_fields(doc, r.key_cut)  # type: ignore[arg-type]
        value = _json(doc)
        o = _new(
            Outgoing, (r.key, value, r.timestamp, r.partition, False, source, None, a, r.key_cut)
        )
        if len(value) > max_output_bytes:
            dead.append(
                refused_letter(
                    o,
                    "output_too_large",
                    f"the assignment is {len(value)} bytes, over {max_output_bytes}",
                )
            )
            served[i] = False
            continue
        out.append(o)
    return BatchOutcome(
        out,
        dead,
        result.assignment[served],
        np.array([math.nan if o.ts_in is None else o.ts_in for o in out], dtype=np.float64),
        inference_seconds,
        float(np.sum(result.log_likelihood[served])),
        version,
    )


def process_batch(
    records: list[InRecord],
    serving: ServingModel,
    max_record_bytes: int,
    seed: int | None = None,
    dlq_payload_bytes: int = 4096,
    max_output_bytes: int = 1_000_000,
    model_name: str = "gmm",
) -> BatchOutcome:
    """Validates, classifies and encodes a batch in one call: every input record yields one
    output, an assignment or a dead letter (the worker runs the three steps separately)."""
    parsed = parse_slice(
        records,
        serving.model.mixture.dim,
        max_record_bytes,
        serving.classifier.temperature,
        seed,
        dlq_payload_bytes,
    )
    result, seconds = classify_slice(parsed, serving) if parsed.valid else (None, 0.0)
    return encode_slice(
        parsed,
        result,
        serving.model.version,
        seconds,
        dlq_payload_bytes,
        max_output_bytes,
        model_name,
    )


_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scrambles every bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def record_keys(seed: int, records: Sequence[InRecord]) -> np.ndarray:
    """(B, 2) uint32 PRNG keys, each a function of (seed, topic, partition, offset) alone.

    A replayed record (after a crash or a rebalance) draws the same assignment at temperature 1,
    and different records, on one worker or on several, draw independently.
    """
    out = np.empty((len(records), 2), np.uint32)
    by_topic: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_topic.setdefault(r.topic, []).append(i)
    with np.errstate(over="ignore"):
        for topic, rows in by_topic.items():
            digest = hashlib.blake2b(f"{seed}\x00{topic}".encode(), digest_size=8).digest()
            base = np.uint64(int.from_bytes(digest, "little") & _MASK64)
            partitions = np.array([records[i].partition for i in rows], np.uint64)
            offsets = np.array([records[i].offset for i in rows], np.uint64)
            z = _mix64(_mix64(base ^ _mix64(partitions + np.uint64(0x9E3779B97F4A7C15))) + offsets)
            out[rows, 0] = (z >> np.uint64(32)).astype(np.uint32)
            out[rows, 1] = (z & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return out
