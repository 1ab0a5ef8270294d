"""Reading the window's partitions: in this process (`read_ranges`), or split between reader
processes (`read_in_processes`), each reading and decoding some of the partitions.

One process reads only as fast as one CPU allows, whichever Kafka client: the client's
per-record Python work and the JSON decoding both hold the GIL (bench/results/window.md).
`read_in_processes` deals the partitions' offset ranges (which the caller took from one
consumer, so every reader stops at the same ends) to `readers` processes (`python -m
trainer.window_readers`); each reads its partitions with `read_ranges` (committed records only,
every batch read or stood in for, glitches counted) and streams back what its window builder
holds, as arrays: the points of each dimension with their timestamps, and the invalid records'
timestamps and reasons. The caller's builder then cuts the window as it does for records it
decoded itself.

The stream is framed binary on the reader's stdout, never pickle: an 8-byte little-endian
length, a JSON header ({"kind": "points", "dim": D, "rows": n} | {"kind": "invalid", "rows":
n} | {"kind": "done"} | {"kind": "error", "error": ..., "message": ...}), then n int64
timestamps and n x D float64 coordinates (or n int8 reason codes). A reader says
{"kind": "ready"} first, once its imports are done (a `trainer.reader_pool` keeps readers
started that far between reads). The request (topic and ranges) is one line of JSON on stdin,
which then stays open: a reader whose stdin ends (its caller gone, whatever killed it) exits at
once. The Kafka settings reach a reader through its
environment, as they reached the trainer. A reader that fails, or whose stream breaks, fails
the read with its reason (a timeout as TimeoutError: the cycle is retried); readers still
running when the read ends, however it ends, are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from kafka_common.settings import KafkaSettings, Secret, load
from mixture.params import MAX_DIM
from mixture.points import REASONS
from trainer.window_builder import WindowBuilder

#: Records decoded at a time (a chunk): the raw bytes held at once are at most a chunk's.
CHUNK = 10_000
_LENGTH = struct.Struct("<Q")
#: The largest header a reader writes (a JSON object of a few fields, or an error's message).
MAX_HEADER = 1 << 16


class ReaderError(RuntimeError):
    """A reader process failed or broke its stream; the message says which and why."""


async def read_ranges(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    builder: WindowBuilder,
) -> None:
    """Reads each partition's offsets [start, end) into the builder, a chunk (CHUNK records) at
    a time, each decoded in a thread so that the consumer's next fetches go on meanwhile."""
    tps = {TopicPartition(topic, p): span for p, span in ranges.items()}
    if not tps:
        return
    consumer.assign(list(tps))
    for tp, (start, _) in tps.items():
        consumer.seek(tp, start)
    remaining = set(tps)
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=CHUNK)
        chunk = [r for tp, items in batch.items() for r in items if r.offset < tps[tp][1]]
        if chunk:
            await asyncio.to_thread(builder.add_records, chunk)
        for tp in list(remaining):
            if await consumer.position(tp) >= tps[tp][1]:
                remaining.discard(tp)


def split(ranges: dict[int, tuple[int, int]], readers: int) -> list[dict[int, tuple[int, int]]]:
    """The partitions' ranges dealt to at most `readers` readers, the largest ranges first, each
    to the reader with the fewest records so far (none empty)."""
    shares: list[dict[int, tuple[int, int]]] = [{} for _ in range(min(readers, len(ranges)))]
    loads = [0] * len(shares)
    for partition, (start, end) in sorted(ranges.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        i = loads.index(min(loads))
        shares[i][partition] = (start, end)
        loads[i] += end - start
    return shares


def kafka_environ(kafka: KafkaSettings) -> dict[str, str]:
    """The environment variables that load `kafka` again in a reader (secrets included: they
    pass from process to process as the environment did, never on a command line)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(kafka):
        env, value = f.metadata.get("env"), getattr(kafka, f.name)
        if env is None:
            continue
        if isinstance(value, Secret):
            out[env] = value.reveal()
        elif isinstance(value, bool):
            out[env] = "1" if value else "0"
        else:
            out[env] = str(value)
    return out


async def read_in_processes(
    kafka: KafkaSettings,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    builder: WindowBuilder,
    readers: int,
    deadline_s: float = 300.0,
) -> None:
    """Reads the partitions' ranges into `builder` with `readers` processes (see the module).
    Each reader gives up after deadline_s of its own (one whose caller died stops there)."""
    async with Readers(kafka, readers) as pool:
        await pool.read(topic, ranges, builder, deadline_s)


class Readers:
    """Reader processes, started on entering (their start-up, imports and all, overlaps what
    the caller does before it knows the ranges; `start` may start them earlier) and gone on
    leaving, however it leaves."""

    def __init__(self, kafka: KafkaSettings, count: int) -> None:
        self.kafka = kafka
        self.count = count
        self.procs: list[asyncio.subprocess.Process] = []
        self._ready: set[int] = set()  # readers whose `ready` frame was read (their pids)

    async def __aenter__(self) -> Readers:
        if not self.procs:
            await self.start()
        return self

    def alive(self) -> bool:
        """Whether every reader is started and still running (none died waiting)."""
        return bool(self.procs) and all(proc.returncode is None for proc in self.procs)

    async def ready(self) -> None:
        """Waits until every reader has finished starting (its `ready` frame); raises
        ReaderError for one that failed to start."""
        await asyncio.gather(*(self._await_ready(proc) for proc in self.procs))

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> None:
        if proc.pid in self._ready:
            return
        assert proc.stdout is not None
        name = f"window reader {proc.pid}"
        try:
            length = _length(await proc.stdout.readexactly(_LENGTH.size), name)
            header = await proc.stdout.readexactly(length)
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            raise ReaderError(f"{name} stopped as it started (exit {code})") from None
        if header != _READY:
            raise ReaderError(f"{name} sent {header[:200]!r} before it was ready")
        self._ready.add(proc.pid)

    async def start(self) -> None:
        """Starts the reader processes (entering does, if this was not called)."""
        env = {**os.environ, **kafka_environ(self.kafka)}
        try:
            for _ in range(self.count):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-P",  # the installed package, never a `trainer/` in the working directory
                    "-m",
                    "trainer.window_readers",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                )
                self.procs.append(proc)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *_: object) -> None:
        # Every reader is killed before any is waited for, and the waits are shielded: a
        # cancellation here leaves no reader running.
        try:
            for proc in self.procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.shield(asyncio.gather(*(proc.wait() for proc in self.procs)))
        finally:
            for proc in self.procs:
                if proc.stdin is not None:
                    proc.stdin.close()

    async def read(
        self,
        topic: str,
        ranges: dict[int, tuple[int, int]],
        builder: WindowBuilder,
        deadline_s: float = 300.0,
    ) -> None:
        """Reads the ranges into `builder`, dealt to the readers (those left without a
        partition are let go). Call once."""
        shares = split(ranges, len(self.procs))
        working = self.procs[: len(shares)]
        for proc in self.procs[len(shares) :]:
            assert proc.stdin is not None
            proc.stdin.close()  # no request: it exits
        for proc, share in zip(working, shares, strict=True):
            request = {
                "topic": topic,
                "ranges": {str(p): list(span) for p, span in share.items()},
                "dim": builder.dim,
                "max_record_bytes": builder.max_record_bytes,
                "deadline_s": deadline_s,
            }
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")  # held open until it exits
            await proc.stdin.drain()
        lock = asyncio.Lock()  # one builder, filled from several streams
        tasks = [asyncio.ensure_future(self._receive(proc, builder, lock)) for proc in working]
        if not tasks:
            return
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # cancelled (the deadline), or one reader failed: the others stop here
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _receive(
        self, proc: asyncio.subprocess.Process, builder: WindowBuilder, lock: asyncio.Lock
    ) -> None:
        await self._await_ready(proc)
        assert proc.stdout is not None
        name = f"window reader {proc.pid}"
        try:
            await read_frames(proc.stdout, builder, lock, name)
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            raise ReaderError(f"{name} stopped mid-stream (exit {code})") from None
        if await proc.wait() != 0:
            raise ReaderError(f"{name} exited {proc.returncode} after its stream")


async def read_frames(
    stream: asyncio.StreamReader, builder: WindowBuilder, lock: asyncio.Lock, name: str
) -> None:
    """Adds a reader's frames to the builder, up to its `done` (see the module); raises the
    reader's error, ReaderError for a frame that breaks the format, IncompleteReadError when
    the stream ends first."""
    while True:
        length = _length(await stream.readexactly(_LENGTH.size), name)
        try:
            header = json.loads(await stream.readexactly(length))
        except ValueError:
            raise ReaderError(f"{name} sent a header that is not JSON") from None
        frame = _frame(header, name)
        if frame is None:  # done
            return
        dim, rows = frame
        if rows > builder.capacity - builder.n_records:  # before any of it is buffered
            raise ReaderError(f"{name} sent {rows} rows, more than the window was sized for")
        times = np.frombuffer(await stream.readexactly(8 * rows), np.int64)
        if dim:
            data = await stream.readexactly(8 * rows * dim)
            coords = np.frombuffer(data, np.float64).reshape(rows, dim)
            async with lock:
                await asyncio.to_thread(builder.add_points, dim, times, coords)
        else:
            codes = np.frombuffer(await stream.readexactly(rows), np.int8)
            if len(codes) and not (codes.min() >= 0 and codes.max() < len(REASONS)):
                raise ReaderError(f"{name} sent a reason code out of range")
            async with lock:
                await asyncio.to_thread(builder.add_invalid, times, codes)


def _length(prefix: bytes, name: str) -> int:
    (length,) = _LENGTH.unpack(prefix)
    if not 0 < length <= MAX_HEADER:
        raise ReaderError(f"{name} sent a header of {length} bytes")
    return int(length)


def _frame(header: Any, name: str) -> tuple[int, int] | None:
    """(dim, rows) of a points (dim >= 1) or invalid (dim 0) frame; None when done; raises
    the reader's own error, or ReaderError for anything else."""
    if not isinstance(header, dict):
        raise ReaderError(f"{name} sent a header that is not an object")
    kind = header.get("kind")
    if kind == "done":
        return None
    if kind == "error":
        message = f"{name}: {header.get('error')}: {header.get('message')}"
        if header.get("error") == "TimeoutError":
            raise TimeoutError(message)
        raise ReaderError(message)
    rows, dim = header.get("rows"), header.get("dim", 0)
    valid_rows = isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
    valid_dim = isinstance(dim, int) and not isinstance(dim, bool) and 0 <= dim <= MAX_DIM
    if kind not in ("points", "invalid") or not (valid_rows and valid_dim):
        raise ReaderError(f"{name} sent an unknown frame: {header!r:.200}")
    assert isinstance(dim, int) and isinstance(rows, int)
    if (kind == "points") != (dim > 0):
        raise ReaderError(f"{name} sent a {kind} frame of dimension {dim}")
    return dim, rows


def frames(builder: WindowBuilder) -> Iterator[bytes | memoryview]:
    """A reader's stream of what its builder holds (see the module), `done` last."""
    for dim, times, values in builder.parts():
        kind = {"kind": "points", "dim": dim} if dim else {"kind": "invalid"}
        yield _encoded({**kind, "rows": len(times)})
        yield np.ascontiguousarray(times, np.int64).data
        yield np.ascontiguousarray(values, np.float64 if dim else np.int8).data
    yield _encoded({"kind": "done"})


def _encoded(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode()
    return _LENGTH.pack(len(raw)) + raw


#: A reader's first frame: started, waiting for its request.
_READY = json.dumps({"kind": "ready"}).encode()


async def _read(request: dict[str, Any]) -> WindowBuilder:
    kafka = load(KafkaSettings, os.environ)
    ranges = {int(p): (int(a), int(b)) for p, (a, b) in request["ranges"].items()}
    builder = WindowBuilder(
        sum(b - a for a, b in ranges.values()), request["dim"], int(request["max_record_bytes"])
    )
    consumer = AIOKafkaConsumer(**kafka.consumer_options(), group_id=None, enable_auto_commit=False)
    try:
        async with asyncio.timeout(float(request["deadline_s"])):
            await consumer.start()
            await asyncio.sleep(0)  # aiokafka#647
            await read_ranges(consumer, request["topic"], ranges, builder)
    finally:
        await consumer.stop()
    return builder


def _exit_when_orphaned(fd: int) -> None:
    """Exits the process when stdin ends: the caller closed it or is gone. (The raw fd: a
    daemon thread blocked in the buffered stdin would abort the interpreter's shutdown.)"""
    while os.read(fd, 1 << 16):
        pass
    os._exit(3)


def _write_all(stdout: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:  # an unbuffered stdout (PYTHONUNBUFFERED) may take part of it
        written = stdout.write(view)
        view = view[written if written is not None else len(view) :]


def main(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """A reader: `ready` on stdout, then the request as one line on stdin, the frames on
    stdout; 1 after an error frame; gone at once (exit 3) when stdin ends."""
    # Ctrl-C in a terminal signals the trainer's whole process group: the trainer decides,
    # and its readers go when their stdin ends or they are killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _write_all(stdout, _LENGTH.pack(len(_READY)) + _READY)
        stdout.flush()
        line = stdin.readline()
        if not line:  # let go before any request
            return 0
        request = json.loads(line)
        threading.Thread(target=_exit_when_orphaned, args=(stdin.fileno(),), daemon=True).start()
        builder = asyncio.run(_read(request))
    except Exception as exc:  # every failure goes back to the caller as a frame
        message = str(exc)[:2000]  # a header stays under MAX_HEADER
        header = {"kind": "error", "error": type(exc).__name__, "message": message}
        _write_all(stdout, _encoded(header))
        stdout.flush()
        return 1
    for chunk in frames(builder):
        _write_all(stdout, chunk)
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.stdin.buffer, sys.stdout.buffer))
