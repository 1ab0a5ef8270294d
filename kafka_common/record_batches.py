"""Reading any record batch the broker accepted, with a defined outcome for what aiokafka cannot.

aiokafka stops a consumer for good at two kinds of batch that a broker accepts from other
clients, and the consumer fetches the same batch again at every restart:
- a header key that is not UTF-8 (Kafka's Java client decodes it leniently, librdkafka and kcat
  send header names as raw bytes): aiokafka's parser raises UnicodeDecodeError;
- a compressed batch that inflates far past the broker's size limit (a "compression bomb":
  1 GB of zeros fits a 1 MB zstd batch): aiokafka inflates it whole, whatever its size.

`install(max_bytes)` makes every consumer of the process read such batches as follows:
- every codec inflates at most `max_bytes` of a batch (GMM_FETCH_DECOMPRESSED_MAX_BYTES);
- a batch aiokafka's parser refuses is parsed again here, header keys decoded with
  replacement characters (headers are never used by this service), so its records are read
  as usual;
- what still cannot be read (a batch over the limit, a corrupt one) becomes one
  `undecodable` stand-in record at the batch's last offset, carrying the reason and the offsets
  it covers: the worker dead-letters it and the trainer counts it, and both go on.

It stands in for aiokafka's MemoryRecords in the fetcher (aiokafka 0.14, pinned): fetched
bytes are split into batches as before, and each batch is parsed by aiokafka's compiled parser
first, so records that parse cost nothing more than before.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import cramjam
import numpy as np
from aiokafka.consumer import fetcher
from aiokafka.record import default_records as py_records
from aiokafka.record import legacy_records as py_legacy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint_py
from aiokafka.structs import ConsumerRecord

try:  # the compiled parsers aiokafka uses unless AIOKAFKA_NO_EXTENSIONS is set
    from aiokafka.record._crecords import default_records as c_records
    from aiokafka.record._crecords import legacy_records as c_legacy
except ImportError:  # pragma: no cover
    c_records = c_legacy = None

#: The header that marks a stand-in record (value None); its value is the reason, as UTF-8.
UNDECODABLE_HEADER = "gmm-undecodable"

_V2_HEADER = 61  # bytes of a v2 batch header before its records
_V2_COUNT = 57  # where its records count is
#: Records of one batch read into a list at once (about the worker's largest micro-batch); a
#: batch with more is read record by record, so a batch never becomes millions of objects.
READ_AT_ONCE = 4096
_LOG_APPEND_TIME = 1


class DecompressionLimit(ValueError):
    """A compressed batch inflates past the configured limit."""


_limit = {"bytes": 16 * 1024 * 1024}


def _check(size: int, codec: str) -> None:
    if size > _limit["bytes"]:
        raise DecompressionLimit(
            f"a {codec} batch inflates past {_limit['bytes']} bytes "
            "(GMM_FETCH_DECOMPRESSED_MAX_BYTES)"
        )


def gzip_decode(payload: Any) -> bytes:
    """gzip (every member; NUL padding between members, as Python's gzip module allows), at
    most the limit; a truncated stream is an error, as it is for aiokafka."""
    out, data = bytearray(), bytes(payload)
    while data := data.lstrip(b"\x00"):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflate.decompress(data, _limit["bytes"] + 1 - len(out))
        _check(len(out), "gzip")
        if inflate.unconsumed_tail:
            _check(_limit["bytes"] + 1, "gzip")
        if not inflate.eof:
            raise EOFError("a gzip stream ends before its end marker")
        data = inflate.unused_data
    return bytes(out)


def _into(module: Any, codec: str, payload: Any) -> bytes:
    # Uninitialised: only the pages written are ever touched.
    out = np.empty(_limit["bytes"], np.uint8)
    try:
        n = module.decompress_into(bytes(payload), out)
    except cramjam.DecompressionError as exc:
        if "whole buffer" in str(exc):
            _check(_limit["bytes"] + 1, codec)
        raise
    return out[:n].tobytes()


def lz4_decode(payload: Any) -> bytes:
    return _into(cramjam.lz4, "lz4", payload)


def zstd_decode(payload: Any) -> bytes:
    return _into(cramjam.zstd, "zstd", payload)


_XERIAL = b"\x82SNAPPY\x00"


def _snappy_blocks(data: bytes) -> list[bytes]:
    """The raw snappy blocks of a payload: itself, or the blocks of xerial's framing (Java's
    client writes it), each of a positive size within the payload."""
    if not data.startswith(_XERIAL):
        return [data]
    blocks, pos = [], 16
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("a xerial snappy block header runs past the batch")
        (size,) = struct.unpack_from(">i", data, pos)
        if not 0 < size <= len(data) - pos - 4:
            raise ValueError(f"a xerial snappy block of {size} bytes at {pos}")
        blocks.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return blocks


def _snappy_size(data: bytes) -> int:
    """What a snappy payload says it inflates to (each raw block starts with its size)."""
    return sum(decode_varint_unsigned(block, 0) for block in _snappy_blocks(data))


def decode_varint_unsigned(data: bytes, pos: int) -> int:
    value, shift = 0, 0
    for byte in data[pos : pos + 10]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise ValueError("a snappy length that never ends")


def snappy_decode(payload: Any) -> bytes:
    blocks = _snappy_blocks(bytes(payload))
    _check(sum(decode_varint_unsigned(block, 0) for block in blocks), "snappy")
    return b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)


@dataclasses.dataclass(frozen=True)
class _Record:
    """What aiokafka's fetcher reads of a record (it builds the ConsumerRecord)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    checksum: None = None


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buffer):
        raise ValueError("a record runs past the batch")
    return decode_varint_py(buffer, pos)


def _bytes_field(buffer: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buffer, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buffer):
        raise ValueError("a field runs past the batch")
    return buffer[pos : pos + length], pos + length


def parse_v2(raw: bytes, batch: Any) -> Iterator[_Record]:
    """The records of one v2 batch, one at a time, header names decoded leniently (aiokafka's
    parser stopped at one); raises at anything else that is wrong with the batch (checks as
    aiokafka's: sizes within the batch, record lengths, header counts, no null header name)."""
    (count,) = struct.unpack_from(">i", raw, _V2_HEADER - 4)
    body: bytes = raw[_V2_HEADER:]
    codec = batch.compression_type
    if codec:
        decode = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}[codec]
        body = decode(body)
    pos = 0
    for _ in range(count):
        length, pos = _varint(body, pos)
        start = pos
        pos += 1  # attributes
        ts_delta, pos = _varint(body, pos)
        offset_delta, pos = _varint(body, pos)
        key, pos = _bytes_field(body, pos)
        value, pos = _bytes_field(body, pos)
        n_headers, pos = _varint(body, pos)
        if n_headers < 0:
            raise ValueError(f"a record with {n_headers} headers")
        headers = []
        for _ in range(n_headers):
            name, pos = _bytes_field(body, pos)
            if name is None:
                raise ValueError("a header with a null name")
            header_value, pos = _bytes_field(body, pos)
            headers.append((name.decode("utf-8", "replace"), header_value))
        if pos - start != length:
            raise ValueError(f"a record of {pos - start} bytes says it has {length}")
        timestamp = (
            batch.max_timestamp
            if batch.timestamp_type == _LOG_APPEND_TIME
            else batch.first_timestamp + ts_delta
        )
        yield _Record(
            batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value,
            tuple(headers),
        )  # fmt: skip
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes after the batch's {count} records")


class _Batch:
    """One v2 batch: aiokafka's, read by its parser; on a failure, read again here or stood in
    for by one undecodable record. (A legacy v0/v1 or control batch that fails fails as it does
    in aiokafka: no broker of this project's version writes the former, and the latter are the
    broker's own.)"""

    def __init__(self, batch: Any, data: bytes, start: int, end: int) -> None:
        self._batch = batch
        self._data, self._start, self._end = data, start, end  # sliced only when needed
        self._records: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:  # base_offset, is_control_batch, validate_crc, ...
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        if self._records is None:
            self._records = self._all()
        return self._records

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker so
        return next(iter(self))

    def _all(self) -> Iterator[Any]:
        if self._batch.magic < 2 or self._count() > READ_AT_ONCE:
            return self._read()  # a legacy batch, or one too large to hold as records at once
        try:
            # The compiled parser reads the whole batch in one call, so the fetcher's loop
            # over it runs no Python frame of this module per record.
            return iter(list(self._batch))
        except Exception:
            if self._batch.is_control_batch:
                raise
        # Read it afresh, record by record, keeping what parses.
        self._batch = type(self._batch)(self._data[self._start : self._end])
        return self._read()

    def _count(self) -> int:
        """The records count of the v2 batch's header: what the parser will read (a batch of
        tiny records compressed well can hold millions, however small its bytes)."""
        (count,) = struct.unpack_from(">i", self._data, self._start + _V2_COUNT)
        return int(count)

    def _read(self) -> Iterator[Any]:
        last = -1
        try:
            for record in self._batch:
                last = record.offset
                yield record
            return
        except Exception as exc:  # whatever the parser refuses: the batch gets an outcome
            if self._batch.magic < 2 or self._batch.is_control_batch:
                raise
            error: Exception = exc
        if isinstance(error, UnicodeDecodeError):
            try:
                for record in parse_v2(self._data[self._start : self._end], self._batch):
                    if record.offset > last:
                        last = record.offset
                        yield record
                return
            except Exception as exc:  # the rest of the batch is unreadable after all
                error = exc
        if last < self._batch.next_offset - 1:
            yield self._stand_in(max(last + 1, self._batch.base_offset), error)

    def _stand_in(self, first: int, error: Exception) -> _Record:
        end = self._batch.next_offset - 1
        reason = (
            f"offsets {first}-{end} of a record batch could not be read: "
            f"{type(error).__name__}: {str(error)[:300]}"
        )
        return _Record(
            end, self._batch.max_timestamp, self._batch.timestamp_type, None, None,
            ((UNDECODABLE_HEADER, reason.encode()),),
        )  # fmt: skip


class TolerantRecords:
    """aiokafka's MemoryRecords over the same bytes, each batch wrapped in `_Batch`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._records = MemoryRecords(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        # aiokafka's MemoryRecords moved by exactly one batch: 12 bytes and the batch's length.
        (length,) = struct.unpack_from(">i", self._data, self._pos + 8)
        start, self._pos = self._pos, self._pos + 12 + length
        return _Batch(batch, self._data, start, self._pos)


def undecodable_reason(record: ConsumerRecord) -> str | None:
    """The reason of a stand-in record (see the module docstring), else None."""
    if record.value is None and record.headers:
        for name, value in record.headers:
            if name == UNDECODABLE_HEADER:
                return (value or b"").decode("utf-8", "replace")
    return None


def install(max_bytes: int) -> None:
    """Makes every aiokafka consumer of this process read batches as the module says, with
    at most `max_bytes` inflated per compressed batch. Idempotent."""
    _limit["bytes"] = max_bytes
    decoders = {
        "gzip_decode": gzip_decode,
        "snappy_decode": snappy_decode,
        "lz4_decode": lz4_decode,
        "zstd_decode": zstd_decode,
    }
    for module in (py_records, c_records, py_legacy, c_legacy):
        if module is not None:
            for name, function in decoders.items():
                if hasattr(module, name):
                    setattr(module, name, function)
    fetcher.MemoryRecords = TolerantRecords
