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

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mixture.classify import Classification
from mixture.point_batches import common_points
from mixture.points import Point, PointError, decode_point
from stream_app.records import InRecord, Outgoing, dead_letter, refused_letter
from wire import assignment as assignment_format

if TYPE_CHECKING:  # types only: this module runs without Faust (bench/device uses it so)
    from stream_app.model_state import ServingModel


class BatchOutcome(NamedTuple):
    """A slice's outgoing records, and what the metrics and the drift watch need of it."""

    assignments: list[Outgoing]
    dead_letters: list[Outgoing]
    components: np.ndarray  # assignment of each delivered output, for the per-component counter
    input_times: np.ndarray  # each assignment's input timestamp (s), NaN where unknown
    inference_seconds: float
    log_likelihoods: np.ndarray  # log p(x) of each delivered output, in the same order
    model_version: int

    @property
    def outputs(self) -> list[Outgoing]:
        return self.assignments + self.dead_letters

    @property
    def log_likelihood_sum(self) -> float:
        """Sum of the delivered assignments' log p(x) under the model that scored them."""
        return float(np.sum(self.log_likelihoods))


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (about 2x faster)


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
    common = common_points([r.value for r in records], dim, max_record_bytes)
    if common is not None:  # every record a valid point of the usual shape
        decoded, coords = common
        valid = list(zip(records, decoded, strict=True))
        return ParsedSlice(valid, dead, coords, _keys(valid, temperature, seed))
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
    return ParsedSlice(valid, dead, points, _keys(valid, temperature, seed))


def _keys(
    valid: list[tuple[InRecord, Point]], temperature: int, seed: int | None
) -> np.ndarray | None:
    if temperature != 1 or not valid:
        return None
    if seed is None:
        raise ValueError("temperature 1 needs a seed")
    return record_keys(seed, [r for r, _ in valid])


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
        empty = np.zeros(0)
        return BatchOutcome([], dead, np.zeros(0, np.int32), empty, 0.0, empty, version)
    ts_out = time.time()
    assignments = result.assignment.tolist()
    probs = result.probs.tolist()
    loglik = result.log_likelihood.tolist()
    # A point whose results overflowed float32 gets a dead letter, not NaN in an output (JSON
    # has no NaN).
    finite = result.finite()
    served = finite.copy()  # which valid points get an assignment
    rows: Sequence[int] = range(len(valid))
    late: list[tuple[int, Outgoing]] = []  # dead letters of valid points, by point
    if not finite.all():
        rows = np.flatnonzero(finite).tolist()
        for i in np.flatnonzero(~finite).tolist():
            late.append(
                (
                    i,
                    dead_letter(
                        valid[i][0],
                        "not_classifiable",
                        "the model's probabilities for this point are not finite",
                        dlq_payload_bytes,
                    ),
                )
            )
    kept = valid
    if len(rows) != len(valid):
        kept = [valid[i] for i in rows]
        assignments = [assignments[i] for i in rows]
        probs = [probs[i] for i in rows]
        loglik = [loglik[i] for i in rows]
    sources = [r.source() for r, _ in kept]
    values = assignment_format.encode_many(
        kept,
        [p.id if p.id is not None else f"{r.topic}:{r.partition}:{r.offset}" for r, p in kept],
        sources,
        assignments,
        probs,
        loglik,
        model_name,
        version,
        ts_out,
    )
    out = [
        _new(Outgoing, (r.key, value, r.timestamp, r.partition, False, source, None, a, r.key_cut))
        for (r, _), a, value, source in zip(kept, assignments, values, sources, strict=True)
    ]
    if values and max(map(len, values)) > max_output_bytes:
        fits = []
        for i, o in zip(rows, out, strict=True):
            if len(o.value) <= max_output_bytes:
                fits.append(o)
                continue
            late.append(
                (
                    i,
                    refused_letter(
                        o,
                        "output_too_large",
                        f"the assignment is {len(o.value)} bytes, over {max_output_bytes}",
                    ),
                )
            )
            served[i] = False
        out = fits
    dead += [letter for _, letter in sorted(late, key=lambda item: item[0])]
    return BatchOutcome(
        out,
        dead,
        result.assignment[served],
        np.array([o.ts_in for o in out], dtype=np.float64),  # None (unknown) becomes NaN
        inference_seconds,
        np.asarray(result.log_likelihood[served], dtype=np.float64),
        version,
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
