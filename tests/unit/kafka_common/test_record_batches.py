"""Record batches aiokafka alone stops at: bounded inflation for every codec, lenient header
keys, and one stand-in record for what cannot be read (the broker tests are in
tests/integration/stream_app/test_any_producer.py)."""

from __future__ import annotations

import gzip
import zlib

import cramjam
import pytest
from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from kafka_common import record_batches as rb

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.fixture(autouse=True)
def limit():
    rb.install(1 << 20)
    yield
    rb.install(16 * 1024 * 1024)


def batch_bytes(records, codec_name="none", base_offset=100) -> bytes:
    builder = DefaultRecordBatchBuilder(2, CODECS[codec_name], 0, -1, -1, -1, 10**8)
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big")
    return bytes(raw)


def read(data: bytes) -> list:
    records = rb.TolerantRecords(data)
    out = []
    while records.has_next():
        out.extend(records.next_batch())
    return out


@pytest.mark.parametrize("name", ["gzip", "snappy", "lz4", "zstd"])
def test_every_codec_inflates_up_to_the_limit_and_refuses_past_it(name):
    decode = {
        "gzip": rb.gzip_decode,
        "snappy": rb.snappy_decode,
        "lz4": rb.lz4_decode,
        "zstd": rb.zstd_decode,
    }[name]
    encode = getattr(codec, f"{name}_encode")
    fits = b"0" * (1 << 20)
    assert decode(encode(fits)) == fits
    with pytest.raises(rb.DecompressionLimit, match=f"a {name} batch inflates past 1048576"):
        decode(encode(fits + b"0"))


def test_gzip_with_several_members_is_read_whole():
    data = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert rb.gzip_decode(data) == b"a" * 10 + b"b" * 10
    bomb = zlib.compress(b"0" * (1 << 21), wbits=31)
    with pytest.raises(rb.DecompressionLimit):
        rb.gzip_decode(bomb)


def test_gzip_reads_as_pythons_gzip_does():
    padded = gzip.compress(b"abc") + b"\x00" * 8 + gzip.compress(b"def") + b"\x00" * 3
    assert rb.gzip_decode(padded) == b"abcdef"
    with pytest.raises(EOFError):
        rb.gzip_decode(gzip.compress(b"abc" * 100)[:-10])


@pytest.mark.parametrize("size", [-4, 0, 2**31 - 1])
def test_a_xerial_snappy_block_of_a_size_that_cannot_be_is_refused(size):
    good = codec.snappy_encode(b"z" * 1000, xerial_compatible=True)
    bad = good[:16] + size.to_bytes(4, "big", signed=True) + good[20:]
    with pytest.raises(ValueError, match="xerial snappy block"):
        rb.snappy_decode(bad)


def test_raw_and_xerial_snappy_sizes_are_read_before_inflating():
    raw = bytes(cramjam.snappy.compress_raw(b"x" * 5000))
    assert rb._snappy_size(raw) == 5000
    xerial = codec.snappy_encode(b"y" * 100_000, xerial_compatible=True, xerial_blocksize=32768)
    assert rb._snappy_size(xerial) == 100_000
    assert rb.snappy_decode(xerial) == b"y" * 100_000


@pytest.mark.parametrize("name", list(CODECS))
def test_batches_read_as_aiokafka_reads_them(name):
    records = [(b"k", b'{"x": 1}', [("h", b"v")]), (None, None, []), (b"k2", b"v2", [])]
    got = read(batch_bytes(records, name))
    assert [(r.offset, r.key, r.value, tuple(r.headers)) for r in got] == [
        (100, b"k", b'{"x": 1}', (("h", b"v"),)),
        (101, None, None, ()),
        (102, b"k2", b"v2", ()),
    ]


@pytest.mark.parametrize("name", ["none", "gzip", "zstd"])
def test_a_header_key_that_is_not_utf8_is_read_leniently_and_nothing_is_lost(name):
    records = [(b"a", b"1", []), (b"b", b"2", [("XQ", b"v"), ("ok", None)]), (b"c", b"3", [])]
    raw = batch_bytes(records, "none")
    assert raw.count(b"XQ") == 1
    bad = raw.replace(b"XQ", b"\xff\xfe")
    if name != "none":  # the same records, compressed
        header, body = bad[:61], bad[61:]
        body = getattr(codec, f"{name}_encode")(body)
        bad = bytearray(header + body)
        bad[8:12] = (len(bad) - 12).to_bytes(4, "big")
        bad[21:23] = CODECS[name].to_bytes(2, "big")
        bad = bytes(bad)
    got = read(bad)
    assert [(r.offset, r.key, r.value) for r in got] == [
        (100, b"a", b"1"),
        (101, b"b", b"2"),
        (102, b"c", b"3"),
    ]
    assert got[1].headers == (("\ufffd\ufffd", b"v"), ("ok", None))
    assert got[1].timestamp == 1_700_000_000_001


def test_a_forged_record_count_after_a_bad_header_name_neither_hangs_nor_invents_records():
    records = [(b"a", b"1", []), (b"b", b"2", [("XQ", b"v")]), (b"c", b"3", [])]
    raw = bytearray(batch_bytes(records).replace(b"XQ", b"\xff\xfe"))
    raw[57:61] = (2**31 - 1).to_bytes(4, "big")
    got = read(bytes(raw))
    # Every offset of the batch was read: the error past them needs no stand-in.
    assert [(r.offset, r.value) for r in got] == [(100, b"1"), (101, b"2"), (102, b"3")]


def test_a_batch_cut_short_after_a_bad_header_name_stands_in_for_the_offsets_it_lost():
    records = [(b"a", b"1", []), (b"b", b"2", [("XQ", b"v")]), (b"c", b"3" * 50, [])]
    raw = bytearray(batch_bytes(records).replace(b"XQ", b"\xff\xfe")[:-20])
    raw[8:12] = (len(raw) - 12).to_bytes(4, "big")  # a batch whose last record was cut short
    got = read(bytes(raw))
    assert [(r.offset, r.value) for r in got[:2]] == [(100, b"1"), (101, b"2")]
    assert [(r.offset, r.value) for r in got[2:]] == [(102, None)]
    reason = rb.undecodable_reason(stand_in_record(got[2]))
    assert reason is not None and reason.startswith("offsets 102-102 of a record batch")


def test_a_batch_past_the_limit_becomes_one_stand_in_at_its_last_offset():
    bomb = [(b"bomb", b"0" * (2 << 20), [])] + [(b"k", b"1", [])] * 4
    good = batch_bytes([(b"g", b"2", [])], base_offset=105)
    got = read(batch_bytes(bomb, "zstd") + good)
    assert [(r.offset, r.value) for r in got] == [(104, None), (105, b"2")]
    reason = rb.undecodable_reason(stand_in_record(got[0]))
    assert reason is not None
    assert reason.startswith("offsets 100-104 of a record batch could not be read")
    assert "DecompressionLimit" in reason


def stand_in_record(record):
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord(
        "t", 0, record.offset, record.timestamp, record.timestamp_type, record.key,
        record.value, None, -1, -1, record.headers,
    )  # fmt: skip


def test_a_real_null_value_is_no_stand_in():
    (tombstone,) = read(batch_bytes([(b"k", None, [("h", b"v")])]))
    assert rb.undecodable_reason(stand_in_record(tombstone)) is None


@pytest.mark.parametrize("at_once", [rb.READ_AT_ONCE, 1])
def test_large_batches_are_read_record_by_record_with_the_same_outcome(at_once, monkeypatch):
    """A batch of more than READ_AT_ONCE records (however well compressed) is never held as
    records at once; small ones are read in one call; both give the same records, and both
    read a bad header name leniently."""
    monkeypatch.setattr(rb, "READ_AT_ONCE", at_once)
    many = [(b"k%d" % i, b"%d" % i, []) for i in range(rb.READ_AT_ONCE + 10)]
    got = read(batch_bytes(many, "zstd"))
    assert [(r.offset, r.value) for r in got] == [(100 + i, b"%d" % i) for i in range(len(many))]
    records = [(b"a", b"1", []), (b"b", b"2", [("XQ", b"v")]), (b"c", b"3", [])]
    bad = read(batch_bytes(records).replace(b"XQ", b"\xff\xfe"))
    assert [(r.offset, r.value, tuple(r.headers)) for r in bad] == [
        (100, b"1", ()),
        (101, b"2", (("\ufffd\ufffd", b"v"),)),
        (102, b"3", ()),
    ]


def test_only_batches_of_at_most_read_at_once_records_become_a_list():
    import types

    for n, lazy in ((rb.READ_AT_ONCE, False), (rb.READ_AT_ONCE + 1, True)):
        data = batch_bytes([(None, b"v", [])] * n, "zstd")
        batch = rb.TolerantRecords(data).next_batch()
        assert isinstance(iter(batch), types.GeneratorType) is lazy
        assert sum(1 for _ in batch) == n
