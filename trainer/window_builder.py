"""The training window held as arrays: points decoded a chunk at a time, cut to the newest.

The window keeps only arrays: 8 bytes a coordinate and 9 a record (`WindowBuilder`), never the
raw values or per-record objects (a 60 KB record that holds one number costs a number; 10
million points of D=8 cost 0.7 GB, `bench/results/window.md`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from aiokafka import ConsumerRecord

from kafka_common.record_batches import undecodable_reason
from mixture.point_batches import decode_coordinates
from mixture.points import REASONS


class Window(NamedTuple):
    points: np.ndarray  # (N, D); N may be 0
    invalid: collections.Counter[str]  # reason -> count
    n_records: int  # records read, valid or not


class WindowBuilder:
    """The points of records added in chunks, held as arrays (never per-record objects).

    Memory: 8 bytes per coordinate and per record (its timestamp), one more for an invalid
    record (its reason); a record's bytes are let go once its chunk is decoded. Points are kept
    in blocks of at least BLOCK_BYTES (their own memory maps: a block let go goes back to the
    system at once). `window` keeps the newest `max_records` by timestamp (ties at the cut: valid
    points first), moving the blocks' rows into the window's array one block at a time: when
    records arrive near timestamp order (each partition's do) its peak is the points once and a
    block, plus 8 bytes a record of indices; at worst (partitions read far apart in time) twice
    the points.
    """

    def __init__(self, capacity: int, dim: int | None, max_record_bytes: int) -> None:
        self.capacity = capacity  # records at most (more raise ValueError)
        self.dim = dim
        self.max_record_bytes = max_record_bytes
        self.n_records = 0
        self._blocks: dict[int, _Blocks] = {}
        self._bad_times: list[np.ndarray] = []
        self._bad_codes: list[np.ndarray] = []

    def add_records(self, records: list[ConsumerRecord]) -> None:
        """Decodes a chunk of consumer records (a batch the client could not read is counted
        as `undecodable`, a null value as a tombstone)."""
        values: list[bytes | None] = [r.value for r in records]
        times = np.fromiter((r.timestamp for r in records), np.int64, len(records))
        undecodable = [
            i for i, v in enumerate(values) if v is None and undecodable_reason(records[i])
        ]
        self.add(values, times, undecodable)

    def add_points(self, dim: int, times: np.ndarray, coords: np.ndarray) -> None:
        """Adds decoded points of one dimension (another builder's `parts`); they count as
        records (the capacity bounds them)."""
        self._count(len(times))
        if len(times):
            self._append(dim, times, coords)

    def _append(self, dim: int, times: np.ndarray, coords: np.ndarray) -> None:
        if dim not in self._blocks:
            self._blocks[dim] = _Blocks(dim, self.capacity)
        self._blocks[dim].append(times, coords)

    def add_invalid(self, times: np.ndarray, codes: np.ndarray) -> None:
        """Adds invalid records (another builder's `parts`): their timestamps and reason codes."""
        self._count(len(times))
        if len(times):
            self._bad_times.append(np.asarray(times, np.int64))
            self._bad_codes.append(np.asarray(codes, np.int8))

    def parts(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Everything added, as (dim, times, coords) per block of points and (0, times, codes)
        for the invalid records; each block is let go once the caller moves on."""
        for dim in list(self._blocks):
            blocks = self._blocks.pop(dim)
            lengths = blocks._lengths()
            blocks.blocks.reverse()
            for n in lengths:
                times, coords = blocks.blocks.pop()
                yield dim, times[:n], coords[:n]
                del times, coords
        if self._bad_times:
            yield 0, np.concatenate(self._bad_times), np.concatenate(self._bad_codes)
            self._bad_times, self._bad_codes = [], []

    def _count(self, n: int) -> None:
        if self.n_records + n > self.capacity:
            raise ValueError(f"more than the {self.capacity} records the window was sized for")
        self.n_records += n

    def add(
        self, values: list[bytes | None], times: np.ndarray, undecodable: Sequence[int] = ()
    ) -> None:
        """Decodes a chunk of record values with their timestamps (ms); `undecodable`: indices
        of records that stand in for a batch the client could not read."""
        self._count(len(values))
        decoded = decode_coordinates(values, self.dim, self.max_record_bytes)
        for d, (index, coords) in decoded.points.items():
            self._append(d, times[index], coords)
        invalid = dict(decoded.invalid)
        invalid.update((i, "undecodable") for i in undecodable)
        if invalid:
            index = np.fromiter(invalid, np.int64, len(invalid))
            self._bad_times.append(times[index])
            self._bad_codes.append(
                np.fromiter((_CODES[r] for r in invalid.values()), np.int8, len(invalid))
            )

    def window(self, max_records: int) -> Window:
        """The newest max_records records (by timestamp) as a Window: the valid points of the
        window's dimension oldest first, every other record counted by reason. Takes the
        blocks' points: call once."""
        dims = list(self._blocks)
        times = [self._blocks[d].times() for d in dims]
        bad_times = np.concatenate(self._bad_times) if self._bad_times else np.zeros(0, np.int64)
        bad_codes = np.concatenate(self._bad_codes) if self._bad_codes else np.zeros(0, np.int8)
        kept = _newest([*times, bad_times], max_records)
        bad_kept = kept.pop()
        invalid = collections.Counter[str]()
        for code, count in zip(*np.unique(bad_codes[bad_kept], return_counts=True), strict=True):
            invalid[REASONS[code]] += int(count)
        sizes = {d: int(k.sum()) for d, k in zip(dims, kept, strict=True) if k.any()}
        dim = self.dim
        if dim is None and sizes:
            newest = {
                d: int(t[k].max()) for d, t, k in zip(dims, times, kept, strict=True) if k.any()
            }
            dim = max(sizes, key=lambda d: (sizes[d], newest[d]))
        for d, count in sizes.items():
            if d != dim:
                invalid["wrong_dim"] += count
        n_kept = sum(sizes.values()) + int(bad_kept.sum())
        if dim not in sizes:
            return Window(np.zeros((0, dim or 1)), invalid, n_kept)
        i = dims.index(dim)
        return Window(self._blocks.pop(dim).take(times[i], kept[i]), invalid, n_kept)


#: Points are held in blocks of at least this many bytes: above glibc's largest threshold for
#: memory maps (32 MiB), so that each block is a map of its own, returned when let go.
BLOCK_BYTES = 64 << 20


class _Blocks:
    """The timestamps and coordinates of one dimension's points, in blocks (np.empty: a block's
    pages are committed as rows are written, so its unwritten tail costs nothing)."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.rows = max(1, min(capacity, BLOCK_BYTES // (8 * dim)))
        self.dim = dim
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.filled = self.rows  # rows written in the last block (full: a new one is needed)

    def append(self, times: np.ndarray, coords: np.ndarray) -> None:
        at = 0
        while at < len(times):
            if self.filled == self.rows:
                self.blocks.append(
                    (np.empty(self.rows, np.int64), np.empty((self.rows, self.dim), np.float64))
                )
                self.filled = 0
            block_times, block_coords = self.blocks[-1]
            n = min(len(times) - at, self.rows - self.filled)
            block_times[self.filled : self.filled + n] = times[at : at + n]
            block_coords[self.filled : self.filled + n] = coords[at : at + n]
            self.filled += n
            at += n

    def _lengths(self) -> list[int]:
        return [self.rows] * (len(self.blocks) - 1) + [self.filled] if self.blocks else []

    def times(self) -> np.ndarray:
        parts = [t[:n] for (t, _), n in zip(self.blocks, self._lengths(), strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def take(self, times: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """The kept points, oldest first (partitions interleave: a stable sort by timestamp),
        moved a block at a time into one array, each block let go once moved."""
        # Index arrays of 8 bytes a record, made one at a time and let go as soon as done.
        rows = np.flatnonzero(kept) if not kept.all() else None
        kept_times = times if rows is None else times[rows]
        if np.all(kept_times[1:] >= kept_times[:-1]):  # in order already (one partition)
            order = None
        else:
            order = np.argsort(kept_times, kind="stable")
        count = len(kept_times)
        del kept_times
        place = np.full(len(times), -1, np.int64)  # each record's row in the window, if kept
        for j in range(0, count, 1 << 20):
            at_rows = np.arange(j, min(j + (1 << 20), count))
            picked = at_rows if order is None else order[at_rows]
            place[picked if rows is None else rows[picked]] = at_rows
        del order, rows
        points = np.empty((count, self.dim), np.float64)
        lengths, at = self._lengths(), 0
        self.blocks.reverse()
        for n in lengths:
            _, coords = self.blocks.pop()
            where = place[at : at + n]
            mine = where >= 0
            if mine.all():  # the common case: no masked copy of the block first
                points[where] = coords[:n]
            else:
                points[where[mine]] = coords[:n][mine]
            at += n
            del coords  # the block's map goes back to the system here
        return points


#: Invalid records' reasons as small codes (a window of millions of glitches stays small).
_CODES = {reason: code for code, reason in enumerate(REASONS)}


def _newest(times: list[np.ndarray], count: int) -> list[np.ndarray]:
    """For arrays of timestamps: masks marking the records among the `count` newest of all
    (records at the cut's timestamp: the last of each array, the first arrays first)."""
    every = np.concatenate(times)
    if len(every) <= count:
        return [np.ones(len(t), bool) for t in times]
    cut = np.partition(every, len(every) - count)[len(every) - count]
    room = count - int((every > cut).sum())
    masks = []
    for t in times:
        mask = t > cut
        at_cut = np.flatnonzero(t == cut)
        take = min(room, len(at_cut))
        if take:
            mask[at_cut[len(at_cut) - take :]] = True
        room -= take
        masks.append(mask)
    return masks


def _valid_points(
    records: list[tuple[int, bytes | None]], dim: int | None, max_record_bytes: int
) -> Window:
    """The window of raw (timestamp, value) records' valid points (oldest first), see
    read_window."""
    builder = WindowBuilder(len(records), dim, max_record_bytes)
    builder.add([v for _, v in records], np.array([t for t, _ in records], np.int64))
    return builder.window(len(records))
