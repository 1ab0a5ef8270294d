"""Order statistics and counts over points that several processes hold between them.

The robust rules (`mixture.robust`) rank a window's points: the fence's quantiles, the trim's
farthest share, a component's median distance. When the window is split over processes
(`mixture.fit_hosts`), those ranks are over the union of every process's points, and every
process must reach the same answer. A `PointGroup` gives them: `ONE_PROCESS` computes them from
this process's points (numpy, as ever); `AllProcesses` from every process's, through JAX's
multi-controller runtime, exactly: the k-th smallest value is found by bisection on the values'
bit patterns (64 rounds of one all-gather of counts each), never by gathering the points.

Every process must call a group's methods in the same order with arrays of the same shapes
(a collective); a branch on local data before a call breaks that, so callers branch only on
what a group returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_TOP_BIT = np.uint64(1 << 63)


class PointGroup:
    """This process's points alone (the one-process window); subclasses span processes."""

    #: Whether other processes hold points too.
    spans_processes = False

    def gather(self, value: np.ndarray) -> np.ndarray:
        """Every process's value (the same shape on each), stacked in process order."""
        return np.asarray(value)[None]

    @property
    def rank(self) -> int:
        """This process's place in the process order."""
        return 0

    def total(self, value: np.ndarray | float | int) -> np.ndarray:
        """The elementwise sum of every process's value."""
        return self.gather(np.asarray(value)).sum(axis=0)

    def all(self, flag: bool) -> bool:
        """Whether the flag holds on every process."""
        return bool(self.gather(np.array(bool(flag))).all())

    def before(self, count: int) -> int:
        """The sum of the counts of the processes before this one."""
        counts = self.gather(np.array(int(count), np.int64))
        return int(counts[: self.rank].sum())

    def kth_smallest(self, columns: Sequence[np.ndarray], ranks: Sequence[int]) -> np.ndarray:
        """For each column (a 1-D float array, its values on this process), the value at
        0-based `rank` in the sorted union over processes (NaN where rank is out of range).
        NaN values are not expected (callers leave them out or map them to -inf)."""
        values = np.full(len(columns), np.nan)
        for i, (column, rank) in enumerate(zip(columns, ranks, strict=True)):
            if 0 <= rank < len(column):
                values[i] = np.partition(np.asarray(column, np.float64), rank)[rank]
        return values

    def largest(self, values: np.ndarray, count: int) -> np.ndarray:
        """(n,) True for this process's share of the `count` largest values over every
        process (NaN counts as -inf); ties go to the earlier point in process order, then in
        each process's own order: as a stable sort of the concatenated values would choose."""
        # NaN to -inf only: nan_to_num would also turn +-inf into the largest finite values,
        # making -inf tie with -1.8e308.
        v = np.nan_to_num(
            np.asarray(values, np.float64), nan=-np.inf, posinf=np.inf, neginf=-np.inf
        )
        n = int(self.total(len(v)))
        chosen = np.zeros(len(v), bool)
        count = min(max(count, 0), n)
        if count == 0:
            return chosen
        cut = float(self.kth_smallest([v], [n - count])[0])
        above = v > cut
        ties = np.flatnonzero(v == cut)
        wanted = count - int(self.total(int(above.sum())))
        earlier = self.before(len(ties))
        mine = min(len(ties), max(0, wanted - earlier))
        chosen[above] = True
        chosen[ties[:mine]] = True
        return chosen


def quantile_rank(n: int, q: float, method: str) -> int:
    """The 0-based rank numpy's quantile takes among n sorted values with method "lower" or
    "higher" (numpy's own arithmetic: floor or ceil of (n - 1) * q)."""
    index = (n - 1) * q
    return int(np.floor(index) if method == "lower" else np.ceil(index))


#: The group of a window held by one process.
ONE_PROCESS = PointGroup()


class Gathering(PointGroup):
    """A group of several processes, given their all-gather: exact order statistics by
    bisection over the values' order-preserving 64-bit keys."""

    spans_processes = True

    def kth_smallest(self, columns: Sequence[np.ndarray], ranks: Sequence[int]) -> np.ndarray:
        keys = [np.sort(_keys(np.asarray(c, np.float64))) for c in columns]
        sizes = self.total(np.array([len(k) for k in keys], np.int64))
        want = np.asarray(ranks, np.int64)
        valid = (want >= 0) & (want < sizes)
        # The smallest key m with at least rank + 1 values <= m, for every column at once.
        lo = np.zeros(len(keys), np.uint64)
        hi = np.full(len(keys), np.iinfo(np.uint64).max, np.uint64)
        for _ in range(64):
            mid = lo + (hi - lo) // np.uint64(2)
            local = np.array(
                [np.searchsorted(k, m, side="right") for k, m in zip(keys, mid, strict=True)],
                np.int64,
            )
            enough = self.total(local) >= want + 1
            hi = np.where(enough, mid, hi)
            lo = np.where(enough, lo, mid + np.uint64(1))
        return np.where(valid, _values(hi), np.nan)


class AllProcesses(Gathering):
    """Every process of JAX's multi-controller runtime (`jax.distributed.initialize`)."""

    def gather(self, value: np.ndarray) -> np.ndarray:
        # JAX holds no 64-bit values unless jax_enable_x64 is on (an int64 or float64 would
        # cross as 32 bits): 8-byte values cross as pairs of uint32, bit for bit.
        from jax.experimental import multihost_utils

        a = np.asarray(value)
        wide = a.dtype.itemsize == 8
        flat = np.ascontiguousarray(a.reshape(-1))
        flat = flat.view(np.uint32) if wide else flat
        out = np.asarray(multihost_utils.process_allgather(flat))
        if wide:
            out = np.ascontiguousarray(out).view(a.dtype)
        return out.reshape((out.shape[0], *a.shape))

    @property
    def rank(self) -> int:
        import jax

        return jax.process_index()


def _keys(values: np.ndarray) -> np.ndarray:
    """Unsigned keys in the order of the float64 values (IEEE 754: flip the negatives' bits,
    set the positives' sign bit)."""
    bits = np.ascontiguousarray(values, np.float64).view(np.uint64)
    negative = (bits & _TOP_BIT) != 0
    return np.where(negative, ~bits, bits | _TOP_BIT)


def _values(keys: np.ndarray) -> np.ndarray:
    negative = (keys & _TOP_BIT) == 0
    bits = np.where(negative, ~keys, keys & ~_TOP_BIT)
    return np.ascontiguousarray(bits, np.uint64).view(np.float64)
