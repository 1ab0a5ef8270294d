"""What several record formats share: the input record's coordinates, a cut key's fields, the
JSON encoder, the error a decoder raises, and how a signed record's bytes and signature header
are laid out (params records and events)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, TypedDict

import orjson


def signed_bytes(domain: bytes, key: bytes, value: bytes) -> bytes:
    """What a record's signature covers: `domain` (a tag no other signed message starts with),
    the key's length (4 bytes, big-endian), the key, the value. The length makes the split
    between key and value unambiguous."""
    return b"".join((domain, len(key).to_bytes(4, "big"), key, value))


def single_header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the record's one header `name`; None if it has none, or more than one."""
    found = [v for k, v in headers or () if k == name]
    return found[0] if len(found) == 1 else None


class WireError(ValueError):
    """A record that does not follow its format (the message says which field and why)."""


class SourceRef(TypedDict):
    """The input record an output answers: enough to find it again and replay it."""

    topic: str
    partition: int
    offset: int


class KeyCut(NamedTuple):
    """What is kept of a key too long to carry: its whole size and SHA-256 (the output's key
    is its first bytes)."""

    size: int
    sha256: str


def add_key_cut(doc: dict[str, Any], cut: KeyCut | None) -> None:
    """Adds `key_size`, `key_sha256` and `key_truncated` to an output whose input key was cut."""
    if cut is not None:
        doc.update(key_size=cut.size, key_sha256=cut.sha256, key_truncated=True)


def exact_size(value: bytes) -> bytes:
    """orjson's `value` copied to its exact size.

    orjson returns its whole working buffer, sized for the worst-case escaping of every string
    (519 KB for a 60 KB output, 4 KB for a 262-byte assignment), and an output is held
    until the broker acknowledges it. Held, those buffers fill memory with mostly unused blocks
    (bench/results/memory.md), and the worker's batches of outputs in flight, spread over them,
    encoded at half the speed: 1,024 held assignments took 4.8-5.0 us each as orjson returns
    them, 2.6 us copied (the copy, a few hundred bytes from Python's small-object allocator,
    included; the working buffer is freed at once and reused by the next call). Not held, the
    copy costs about 0.3 us.
    """
    return bytes(memoryview(value))


def dumps(doc: dict[str, Any], key_cut: KeyCut | None = None) -> bytes:
    """Compact JSON (orjson), no larger in memory than its length; with the cut key's fields
    when the input's key was cut."""
    add_key_cut(doc, key_cut)
    return exact_size(orjson.dumps(doc))


def loads_object(value: bytes | str, what: str) -> dict[str, Any]:
    """The JSON object in `value`, or WireError."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"{what}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(f"{what}: not a JSON object")
    return doc


def require(doc: dict[str, Any], what: str, fields: dict[str, tuple[type, ...]]) -> None:
    """WireError unless every field is present with one of its types (bool is not an int)."""
    for name, types in fields.items():
        if name not in doc:
            raise WireError(f"{what}: missing {name!r}")
        value = doc[name]
        if isinstance(value, bool) and bool not in types:
            raise WireError(f"{what}: {name!r} must be {_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise WireError(f"{what}: {name!r} must be {_names(types)}, got {value!r:.60}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_source(doc: dict[str, Any], what: str, optional: bool = False) -> None:
    """WireError unless `doc["source"]` is a SourceRef (or null, when `optional`)."""
    source = doc.get("source")
    if source is None and optional and "source" in doc:
        return
    if not isinstance(source, dict):
        raise WireError(f"{what}: 'source' must be an object with topic, partition, offset")
    require(source, f"{what} source", {"topic": (str,), "partition": (int,), "offset": (int,)})


def decode_object(
    value: bytes | str,
    what: str,
    fields: dict[str, tuple[type, ...]],
    source_optional: bool = False,
) -> dict[str, Any]:
    """The JSON object in `value`, with `fields` of their types and a `source` (WireError)."""
    doc = loads_object(value, what)
    require(doc, what, fields)
    check_source(doc, what, source_optional)
    return doc
