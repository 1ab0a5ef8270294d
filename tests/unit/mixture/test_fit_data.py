"""Window preparation: the column statistics and the standardised, padded points equal numpy's
plain forms, whatever the block and row-group boundaries (windows longer than a block, a tail
shorter than a row group, non-contiguous inputs, missing values)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from mixture.fit_data import Standardizer, padded_points, padded_size
from mixture.params import column_stats, grouped_rows, range_and_sums, row_group

pytestmark = pytest.mark.unit

# Longer than one block of rows (2^15), and not a multiple of any row group.
N = (1 << 15) + 1001


def _points(n: int, dim: int, layout: str) -> np.ndarray:
    rng = np.random.default_rng(dim)
    x = rng.normal(3.0, 2.0, size=(n, 2 * dim)) * np.arange(1, 2 * dim + 1)
    if layout == "strided":  # every other column: not C-contiguous
        return x[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(x[:, :dim])
    return np.ascontiguousarray(x[:, :dim])


@pytest.mark.parametrize("dim", [1, 3, 8])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "fortran"])
def test_column_stats_and_sums_equal_numpys(dim, layout):
    x = _points(N, dim, layout)
    low, high, sums = range_and_sums(x)
    assert (low, high) == (x.min(), x.max())
    assert_allclose(sums, x.sum(axis=0), rtol=1e-12)
    mean, std = column_stats(x, True, sums)
    assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    assert_allclose(std, x.std(axis=0), rtol=1e-12)
    assert_allclose(column_stats(x)[1], x.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 3, 8])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_padded_points_are_the_standardised_points_rounded_once(dim, layout, covariance):
    x = _points(N, dim, layout)
    std = Standardizer(x.mean(axis=0), x.std(axis=0))
    size = padded_size(N)
    padded, mask, counts = padded_points(x, std, size, covariance, True)
    assert padded.shape == (size, dim) and padded.dtype == np.float32
    assert_array_equal(padded[:N], std.points(x).astype(np.float32))
    assert not padded[N:].any()
    assert_array_equal(counts, N)
    assert int(np.asarray(mask).sum()) == (N if covariance == "full" else N * dim)


def test_missing_values_are_zeros_outside_the_mask():
    x = _points(1000, 3, "contiguous")
    x[5, 1] = np.nan
    std = Standardizer(*column_stats(x))
    assert_allclose(std.mean, np.nanmean(x, axis=0))
    padded, mask, counts = padded_points(x, std, padded_size(1000), "diag")
    assert padded[5, 1] == 0.0 and not mask[5, 1] and mask[5, 0]
    assert_array_equal(counts, [1000, 999, 1000])


@pytest.mark.parametrize(("dim", "group"), [(1, 1), (2, 256), (3, 128), (8, 64), (600, 1)])
def test_row_groups_cover_the_block_in_order(dim, group):
    assert row_group(dim) == group
    block = np.arange(1000 * dim, dtype=float).reshape(1000, dim)
    parts = grouped_rows(block, group)
    assert_array_equal(np.concatenate([p.reshape(-1) for p, _ in parts]), block.reshape(-1))
    assert all(p.shape[1] == rows * dim for p, rows in parts)
