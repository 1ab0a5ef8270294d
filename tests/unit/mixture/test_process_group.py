"""Order statistics over parts held by several processes equal those of the concatenated parts.

The processes are threads here (an in-memory all-gather on a barrier): the algorithms are the
ones `AllProcesses` runs, its gather alone is JAX's (tests/unit/mixture/test_fit_processes.py
runs it across real processes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from mixture import robust
from mixture.params import MixtureParams
from mixture.process_group import ONE_PROCESS, Gathering, _keys, _values, quantile_rank


class _Board:
    def __init__(self, size: int) -> None:
        self.slots: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)


class ThreadGroup(Gathering):
    """One of `size` threads standing in for processes."""

    def __init__(self, board: _Board, rank: int) -> None:
        self.board, self._rank = board, rank

    @property
    def rank(self) -> int:
        return self._rank

    def gather(self, value: np.ndarray) -> np.ndarray:
        self.board.slots[self._rank] = np.asarray(value)
        self.board.barrier.wait()
        out = np.stack(self.board.slots)
        self.board.barrier.wait()  # every thread has read the slots before any writes again
        return out


def across(parts: list[np.ndarray], work: Callable[[np.ndarray, Any], Any]) -> list[Any]:
    """work(part, group) on each part, in a thread of its own, as processes would run it."""
    board = _Board(len(parts))
    with ThreadPoolExecutor(len(parts)) as pool:
        futures = [pool.submit(work, part, ThreadGroup(board, i)) for i, part in enumerate(parts)]
        return [f.result(timeout=60) for f in futures]


def split(x: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(x, sorted(cuts))


values = st.lists(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.sampled_from([0.0, -0.0, 1.0, -np.inf, np.inf]),
    ),
    min_size=0,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(values, st.lists(st.integers(0, 40), max_size=3), st.data())
def test_kth_smallest_and_largest_are_those_of_the_concatenation(data_, cuts, draw):
    x = np.asarray(data_, np.float64)
    parts = split(x, [min(c, len(x)) for c in cuts])
    rank = draw.draw(st.integers(-1, len(x)))
    count = draw.draw(st.integers(0, len(x) + 1))

    def work(part: np.ndarray, group: Any) -> Any:
        return group.kth_smallest([part], [rank])[0], group.largest(part, count)

    results = across(parts, work)
    expected = np.sort(x)[rank] if 0 <= rank < len(x) else np.nan
    for kth, _ in results:
        assert_array_equal(kth, expected)  # -0.0 == 0.0
    chosen = np.concatenate([c for _, c in results])
    one = np.zeros(len(x), bool)
    one[np.argsort(-x, kind="stable")[: min(count, len(x))]] = True
    assert_array_equal(chosen, one)
    assert_array_equal(ONE_PROCESS.largest(x, count), one)


def test_keys_order_as_the_values_do():
    x = np.array([-np.inf, -1e300, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e300, np.inf])
    keys = _keys(x)
    assert (np.diff(keys.astype(object)) > 0).all()
    assert_array_equal(_values(keys), x)


@pytest.mark.parametrize("n", [*range(1, 60), 101, 1000, 12345, 1_000_001])
def test_quantile_rank_is_numpys(n):
    x = np.arange(n, dtype=np.float64)
    for q, method in ((0.05, "higher"), (0.95, "lower"), (0.5, "higher"), (0.5, "lower")):
        assert quantile_rank(n, q, method) == np.quantile(x, q, method=method)


def _window(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal([6, 1], 0.5, (200, 2))])
    x[rng.choice(len(x), 12, replace=False)] = rng.uniform(-1e6, 1e6, (12, 2))  # glitches
    x[::37, 0] = np.nan
    return x[rng.permutation(len(x))]


def _model() -> MixtureParams:
    return MixtureParams(
        np.array([0.6, 0.39, 0.01]),
        np.array([[0.0, 0.0], [6.0, 1.0], [3.0, 3.0]]),
        np.array([np.eye(2), 0.5 * np.eye(2), 3.0 * np.eye(2)]),
    )


@pytest.mark.parametrize("cuts", [[0], [250], [1, 499], [100, 101, 350]])
def test_the_robust_rules_over_parts_are_those_over_the_window(cuts):
    x = _window(1)
    params = _model()
    parts = split(x, cuts)

    def work(part: np.ndarray, group: Any) -> Any:
        lower, upper = robust.fence(part, group)
        return (
            lower,
            upper,
            robust.inside_fence(part, group),
            robust.implausible(part, params, 0.0, group),
            robust.implausible(part, params, robust.FORCED_TRIM_SHARE, group),
            robust.suspect(part, params, group),
        )

    results = across(parts, work)
    lower, upper = robust.fence(x)
    one_lo = np.nanquantile(x, robust.FENCE_QUANTILE, axis=0, method="higher")
    assert np.isfinite(lower).all() and (lower < one_lo).all()
    for lo, hi, *_ in results:
        assert_allclose(lo, lower, rtol=0)
        assert_allclose(hi, upper, rtol=0)
    for i, one in enumerate(
        (
            robust.inside_fence(x),
            robust.implausible(x, params),
            robust.implausible(x, params, robust.FORCED_TRIM_SHARE),
        ),
        start=2,
    ):
        assert_array_equal(np.concatenate([r[i] for r in results]), one)
    assert robust.implausible(x, params).sum() > 0
    assert {r[5] for r in results} == {robust.suspect(x, params)}


@pytest.mark.parametrize("stretch", [1.0, 4.0])
def test_suspect_over_parts_judges_the_window_s_medians(stretch):
    x = _window(2)
    params = MixtureParams(
        np.array([0.6, 0.4]),
        np.array([[0.0, 0.0], [6.0, 1.0]]),
        np.array([np.eye(2), 0.25 * stretch * np.eye(2)]),  # 4: its points fill half of it
    )
    x = x[robust.inside_fence(x)]
    one = robust.suspect(x, params)
    assert one == (stretch > 1)
    got = across(split(x, [3, 260]), lambda p, g: robust.suspect(p, params, g))
    assert got == [one] * 3


def test_the_trim_cap_picks_the_farthest_across_parts():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (400, 2))
    x[:60] *= 50.0  # 15 % far: more than MAX_TRIM_SHARE beyond the cut
    x = x[rng.permutation(len(x))]
    params = MixtureParams(np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None])
    one = robust.implausible(x, params)
    assert one.sum() == int(robust.MAX_TRIM_SHARE * len(x))
    got = across(split(x, [7, 200]), lambda p, g: robust.implausible(p, params, 0.0, g))
    assert_array_equal(np.concatenate(got), one)


def test_minus_infinity_ranks_below_the_lowest_finite_value():
    """-inf is not the lowest finite float (a tie there picked -inf first; hypothesis found it)."""
    x = np.array([0.0] * 6 + [-np.inf, -np.finfo(np.float64).max])
    assert_array_equal(ONE_PROCESS.largest(x, 7), [True] * 6 + [False, True])
    x = np.array([np.inf, np.finfo(np.float64).max, np.nan])
    assert_array_equal(ONE_PROCESS.largest(x, 1), [True, False, False])
