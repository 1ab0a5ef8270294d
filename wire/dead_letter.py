"""The dead-letter record (`GMM_DLQ_TOPIC`, same Kafka key as the input record): why an input
was not classified, where it came from, and its payload's size, SHA-256 and first bytes.

At most `GMM_DLQ_PAYLOAD_BYTES` of the payload travel with it (base64, and as text when they are
UTF-8), so a record of any size the broker accepted gets one dead letter the broker also
accepts. A *refused* letter stands in for an output the broker would not take (reason
`output_too_large` or `output_rejected`): it carries no payload, only the refused output's size
and SHA-256, and a refused dead letter's own reason as `original_reason`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, NotRequired, TypedDict

from wire.common import KeyCut, SourceRef, WireError, decode_object, dumps

#: The fields every record has, and their JSON types (checked by `decode`).
FIELDS: dict[str, tuple[type, ...]] = {
    "reason": (str,),
    "error": (str,),
    "ts_in": (int, float, type(None)),
    "payload_size": (int,),
    "payload_sha256": (str,),
    "payload_truncated": (bool,),
    "payload_base64": (str,),
    "payload_text": (str, type(None)),
}
WHAT = "dead letter"
#: Reasons of the worker's own, beside the input's (mixture.points.REASONS).
OUTPUT_REASONS = ("output_too_large", "output_rejected", "not_classifiable")


class DeadLetterRecord(TypedDict):
    """Why, where from, and the payload's size, SHA-256 and first bytes."""

    reason: str
    error: str
    source: SourceRef
    ts_in: float | None
    payload_size: int
    payload_sha256: str
    payload_truncated: bool
    payload_base64: str
    payload_text: str | None
    original_reason: NotRequired[str]  # on a refused letter that stands in for a dead letter
    key_size: NotRequired[int]  # the input key's size, when it was cut
    key_sha256: NotRequired[str]
    key_truncated: NotRequired[bool]


def _text_prefix(prefix: bytes, truncated: bool) -> str | None:
    """The prefix as text if it is UTF-8; a character cut by the truncation is dropped."""
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data":
            return prefix[: exc.start].decode("utf-8")
        return None


def encode(
    reason: str,
    error: str,
    source: SourceRef,
    ts_in: float | None,
    payload: bytes,
    payload_bytes: int,
    key_cut: KeyCut | None = None,
) -> bytes:
    """A dead letter for an input record, with at most `payload_bytes` of its payload."""
    prefix = payload[:payload_bytes]
    truncated = len(prefix) < len(payload)
    doc: dict[str, Any] = {
        "reason": reason,
        "error": error,
        "source": source,
        "ts_in": ts_in,
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_truncated": truncated,
        "payload_base64": base64.b64encode(prefix).decode("ascii"),
        "payload_text": _text_prefix(prefix, truncated),
    }
    return dumps(doc, key_cut)


def encode_refused(
    reason: str,
    error: str,
    source: SourceRef,
    ts_in: float | None,
    refused: bytes,
    original_reason: str | None = None,
    key_cut: KeyCut | None = None,
) -> bytes:
    """The small letter that stands in for a refused output (`refused`: its bytes)."""
    doc: dict[str, Any] = {
        "reason": reason,
        "error": error[:500],
        "source": source,
        "ts_in": ts_in,
        "payload_size": len(refused),
        "payload_sha256": hashlib.sha256(refused).hexdigest(),
        "payload_truncated": True,
        "payload_base64": "",
        "payload_text": None,
    }
    if original_reason is not None:
        doc["original_reason"] = original_reason
    return dumps(doc, key_cut)


def decode(value: bytes | str) -> DeadLetterRecord:
    """A dead letter, checked field by field (WireError says what is wrong)."""
    doc = decode_object(value, WHAT, FIELDS)
    try:
        prefix = base64.b64decode(doc["payload_base64"], validate=True)
    except ValueError:
        raise WireError(f"{WHAT}: payload_base64 is not base64") from None
    if len(prefix) > doc["payload_size"]:
        raise WireError(f"{WHAT}: more payload bytes than payload_size")
    return doc  # type: ignore[return-value]


def payload_prefix(letter: DeadLetterRecord) -> bytes:
    """The payload bytes the letter carries (its first bytes, or all of a small payload)."""
    return base64.b64decode(letter["payload_base64"])
