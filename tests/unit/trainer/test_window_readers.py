"""The window readers' protocol without a broker: how partitions are dealt, how the Kafka
settings travel, and the frames a reader streams back (a round trip, and broken streams)."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from kafka_common.settings import KafkaSettings, Secret, load
from trainer.window_builder import WindowBuilder
from trainer.window_readers import ReaderError, frames, kafka_environ, read_frames, split


def test_split_deals_every_partition_once_and_evens_the_records():
    ranges = {0: (0, 100), 1: (50, 60), 2: (0, 90), 3: (5, 10), 4: (0, 30)}
    shares = split(ranges, 2)
    assert len(shares) == 2
    dealt = {p: span for share in shares for p, span in share.items()}
    assert dealt == ranges
    loads = sorted(sum(b - a for a, b in share.values()) for share in shares)
    assert loads == [115, 120]  # the largest first, each to the lighter: 100, 10, 5 | 90, 30
    assert len(split(ranges, 9)) == len(ranges)  # never an empty reader


def test_the_kafka_settings_load_again_from_the_readers_environment():
    kafka = KafkaSettings(
        bootstrap_servers="a:1,b:2",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="trainer",
        sasl_password=Secret("s3cret value"),
        fetch_max_bytes=12_345_678,
    )
    again = load(KafkaSettings, kafka_environ(kafka))
    assert again == kafka
    assert again.sasl_password.reveal() == "s3cret value"


def _source() -> WindowBuilder:
    builder = WindowBuilder(10, None, 65536)
    values = [b'{"x": [1, 2]}', b'{"x": [3]}', b"nope", b'{"x": [4, 5]}', None]
    builder.add(values, np.array([5, 1, 7, 2, 9], np.int64))
    return builder


def _stream(data: bytes) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return stream


def _receive(data: bytes, capacity: int = 10) -> WindowBuilder:
    async def go() -> WindowBuilder:
        target = WindowBuilder(capacity, None, 65536)
        await read_frames(_stream(data), target, asyncio.Lock(), "reader")
        return target

    return asyncio.run(go())


def test_frames_carry_a_builder_whole():
    expected = _source().window(10)
    target = _receive(b"".join(bytes(chunk) for chunk in frames(_source())))
    got = target.window(10)
    assert_array_equal(got.points, expected.points)
    assert got.invalid == expected.invalid
    assert got.n_records == expected.n_records == 5


def _frame(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (_frame({"kind": "error", "error": "KafkaError", "message": "no"}), ReaderError, "no"),
        (
            _frame({"kind": "error", "error": "TimeoutError", "message": "late"}),
            TimeoutError,
            "late",
        ),
        (_frame({"kind": "points", "dim": 0, "rows": 1}), ReaderError, "dimension 0"),
        (_frame({"kind": "points", "dim": 2, "rows": -1}), ReaderError, "unknown frame"),
        (_frame({"kind": "pickle"}), ReaderError, "unknown frame"),
        (_frame([1, 2]), ReaderError, "not an object"),
        (struct.pack("<Q", 1 << 40), ReaderError, "header of"),
        (struct.pack("<Q", 3) + b"{x}", ReaderError, "not JSON"),
        (_frame({"kind": "invalid", "rows": 1}, b"\0" * 8 + b"\x7f"), ReaderError, "code"),
        (
            _frame({"kind": "points", "dim": 2, "rows": 3}, b"\0" * 8),
            asyncio.IncompleteReadError,
            None,
        ),
        (_frame({"kind": "points", "dim": 1, "rows": 11}), ReaderError, "sized for"),
        (_frame({"kind": "points", "dim": 2, "rows": 10**12}), ReaderError, "sized for"),
        (b"", asyncio.IncompleteReadError, None),
    ],
)
def test_a_broken_stream_fails_with_its_reason(data, error, message):
    with pytest.raises(error, match=message):
        _receive(data)


def test_a_reader_whose_caller_is_gone_exits_at_once(tmp_path):
    """A reader stuck on a broker that never answers (a socket that accepts nothing) exits as
    soon as its stdin ends, as when the trainer that started it is killed."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{silent.getsockname()[1]}"}
        request = {"topic": "t", "ranges": {"0": [0, 5]}, "dim": 2, "max_record_bytes": 65536}
        reader = subprocess.Popen(
            [sys.executable, "-P", "-m", "trainer.window_readers"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert reader.stdin is not None
            reader.stdin.write(json.dumps({**request, "deadline_s": 600}).encode() + b"\n")
            reader.stdin.flush()
            time.sleep(1.0)  # let it block on the broker (the assertion below is on its exit)
            assert reader.poll() is None  # still waiting for the broker
            reader.stdin.close()
            assert reader.wait(timeout=20) == 3
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
