"""The records the worker's parts hand each other: `InRecord` in (from the source), `Outgoing`
out (to delivery), and the dead letters that replace an output. Formats on the wire are in
`wire.assignment` and `wire.dead_letter`; this module only carries them."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from wire import dead_letter as dead_letter_format
from wire.common import KeyCut, SourceRef


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

    def source(self) -> SourceRef:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


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


def dead_letter(r: InRecord, reason: str, error: str, payload_bytes: int) -> Outgoing:
    """The input's dead letter, with at most `payload_bytes` of its payload."""
    source = r.source()
    value = dead_letter_format.encode(
        reason, error, source, r.timestamp, r.value or b"", payload_bytes, r.key_cut
    )
    return Outgoing(r.key, value, r.timestamp, r.partition, True, source, reason, -1, r.key_cut)


def refused_letter(out: Outgoing, reason: str, error: str) -> Outgoing:
    """The small dead letter that stands in for an output the broker would not take
    (`reason`: output_too_large or output_rejected); it keeps the input's coordinates."""
    value = dead_letter_format.encode_refused(
        reason,
        error,
        out.source,
        out.ts_in,
        out.value,
        out.reason if out.dead_letter else None,
        out.key_cut,
    )
    return Outgoing(
        out.key, value, out.ts_in, out.partition, True, out.source, reason, -1, out.key_cut
    )
