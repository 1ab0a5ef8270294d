"""Data preparation for the MAP fit: validation, standardisation, padding and masks.

The fit runs in standardised coordinates (each dimension centred and scaled by the data's own
mean and standard deviation), with the priors mapped along. This is an exact change of variables:
the MAP point maps back unchanged and the loss differs by a constant log-Jacobian, which is added
back so that reported losses are in the data's units. It makes one step size suit data at 10^4
as well as data at 0-12. `prepare_window` turns a window into what the fit's programs take
(`FitWindow`); windows are padded (and masked) to a few sizes so they reuse a few programs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixture.covariance import is_cholesky
from mixture.fit_config import FitConfig
from mixture.params import (
    MixtureParams,
    Priors,
    column_stats,
    data_priors,
    grouped_rows,
    range_and_sums,
    row_group,
    seed_priors,
)
from mixture.points import MAX_ABS

#: Fit programs take windows padded (and masked) up to one of a few sizes, so windows of any size
#: reuse a few programs: 2^j and 3 * 2^(j-1) from MIN_PADDED up to FINE_PADDED (at most a third
#: wasted, where a fit costs little and a compilation much), eight sizes an octave above it
#: (m * 2^j, m = 9..16: under an eighth wasted, where the fit's time is the window's). The
#: trainer's default window of 100,000 points pads to 106,496, not 131,072; 10,000,000 to
#: 10,485,760, not 12,582,912.
MIN_PADDED = 256
FINE_PADDED = 2**16

#: The fit's programs sum the loss over blocks of points (see `point_block`): at most
#: POINT_BLOCK points, and at most BLOCK_VALUES values of the candidates x block x K x D
#: intermediates, so that a block's work stays in cache.
POINT_BLOCK = 8192
BLOCK_VALUES = 2**21
MIN_BLOCK = 256


def point_block(size: int, width: int = 1) -> int:
    """The block a padded window of `size` points is summed in, for `width` values per point
    (candidates x K x D): the whole window when it is within the limits above (one block: the
    smallest program), else the largest power of two dividing `size` within them (padded sizes
    are 2^j or 3 * 2^(j-1) up to FINE_PADDED, multiples of 2^13 above it, so a block is at
    least a third of the limit)."""
    limit = max(MIN_BLOCK, min(POINT_BLOCK, BLOCK_VALUES // max(width, 1)))
    if size <= limit:
        return size
    return min(size & -size, 1 << (limit.bit_length() - 1))


def padded_size(n: int) -> int:
    """The padded window size for n points (see MIN_PADDED and FINE_PADDED)."""
    size = MIN_PADDED
    while size < n and size < FINE_PADDED:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    if size >= n:
        return size
    step = 1 << ((n - 1).bit_length() - 4)  # 2^(j-3) for 2^j < n <= 2^(j+1)
    return -(-n // step) * step


class DataError(ValueError):
    """Data that cannot be fit; the message says why in one line, `reason` as a short code."""

    def __init__(self, message: str, reason: str = "invalid_data") -> None:
        super().__init__(message)
        self.reason = reason


class Standardizer(NamedTuple):
    """x = mean + std * z, per dimension (one common std for spherical covariances, which a
    per-dimension rescaling would make non-spherical)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(
        cls, x: np.ndarray, covariance: str, stats: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Standardizer:
        """From the data's observed values (NaN: missing); stats: their column_stats if known."""
        mean, std = column_stats(x) if stats is None else stats
        if covariance == "spherical":
            std = np.full_like(std, np.exp(np.log(std).mean()))
        return cls(mean, std)

    def points(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def priors(self, p: Priors) -> Priors:
        return Priors(
            p.concentration,
            (p.loc_center - self.mean) / self.std,
            p.loc_scale / self.std,
            p.scale_log_mean - np.log(self.std),
            p.scale_log_sd,
            p.lkj_concentration,
        )

    def params_to_data(self, m: MixtureParams) -> MixtureParams:
        scale = np.asarray(m.scale, np.float64)
        # diag(std) @ L is still lower triangular and the Cholesky factor of the data covariance.
        scale = self.std[:, None] * scale if scale.ndim == 3 else self.std * scale
        return MixtureParams(
            np.asarray(m.weights, np.float64),
            self.mean + self.std * np.asarray(m.locs, np.float64),
            scale,
        )

    def params_from_data(self, m: MixtureParams) -> MixtureParams:
        scale = np.asarray(m.scale, np.float64)
        scale = scale / self.std[:, None] if scale.ndim == 3 else scale / self.std
        return MixtureParams(
            np.asarray(m.weights), (np.asarray(m.locs) - self.mean) / self.std, scale
        )

    def loss_offset(
        self, n_points: int, n_components: int, covariance: str, observed: Any = None
    ) -> float:
        """log|Jacobian| of z -> x for every density in the joint (observations, locs, scales);
        correlations are scale-free. observed: per dimension, how many values were observed
        (default: all n_points)."""
        log_std = float(np.log(self.std).sum())
        if observed is not None:
            obs_term = float((np.asarray(observed) * np.log(self.std)).sum())
            return obs_term + n_components * log_std + self._per_scale(n_components, covariance)
        return (n_points + n_components) * log_std + self._per_scale(n_components, covariance)

    def _per_scale(self, n_components: int, covariance: str) -> float:
        log_std = float(np.log(self.std).sum())
        per_scale = {
            "tied-diag": log_std,
            "diag": n_components * log_std,
            "spherical": n_components * log_std / len(self.std),
            "tied": log_std,
            "full": n_components * log_std,
        }[covariance]
        return per_scale


def as_points(data: Any, n_components: int | None = None) -> np.ndarray:
    """Validates data for fitting and returns it as a float64 (N, D) array."""
    return validated_points(data, n_components)[0]


def validated_points(
    data: Any, n_components: int | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """`as_points`, and the points' column_stats (which the check for spread computes)."""
    x, stats, _ = checked_points(data, n_components)
    return x, stats


def checked_points(
    data: Any, n_components: int | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], bool]:
    """`validated_points`, and whether no value is missing (NaN): the range check's one pass
    tells, so nothing after it need look for NaN again (each look is a pass over the window:
    at 1M points of D=8, a few milliseconds of a refit)."""
    try:
        x = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("data must be numbers: a list of points or an (N, D) array") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(f"data must be (N,) or (N, D); got shape {x.shape}")
    # One pass settles the common case (every value finite and in range); a NaN, an infinity or
    # a value out of range makes the maximum fail the test, and the checks below say which.
    sums = None
    if x.size:  # no whole-data temporary
        low, high, sums = range_and_sums(x)
        complete = high <= MAX_ABS and low >= -MAX_ABS
    else:
        complete = True
    if not complete:
        _check_values(x)  # what is left after it is a NaN (a missing value)
    if n_components is not None and x.shape[0] < n_components:
        raise DataError(
            f"{x.shape[0]} point(s) cannot fit {n_components} components", "too_few_points"
        )
    stats = (
        column_stats(x, complete, sums)
        if x.shape[0] >= 2
        else (np.zeros(x.shape[1]), np.zeros(x.shape[1]))
    )
    std = stats[1]
    if x.shape[0] < 2 or not np.all(std > 0):
        dims = np.flatnonzero(~(std > 0)).tolist() if x.shape[0] >= 2 else "all"
        raise DataError(
            f"data has zero variance (dimension(s) {dims}): nothing to separate", "zero_variance"
        )
    return x, stats, complete


def _check_values(x: np.ndarray, columns: bool = True) -> None:
    """Infinite and out-of-range values are errors; NaN (missing) is not, unless a point or
    (with `columns`) a dimension has no observed value at all."""
    if np.any(np.isinf(x)):
        bad = int(np.isinf(x).any(axis=1).sum())
        raise DataError(f"data has {bad} point(s) with infinite coordinates", "not_finite")
    if np.any(np.abs(x) > MAX_ABS):  # NaN (missing) compares False
        bad = int((np.abs(x) > MAX_ABS).any(axis=1).sum())
        raise DataError(
            f"data has {bad} point(s) with a coordinate beyond +-{MAX_ABS:g}", "out_of_range"
        )
    # NaN is a missing coordinate (null on the wire); a point needs at least one observed.
    missing = np.isnan(x)
    if missing.any() and (x.shape[1] == 1 or missing.all(axis=1).any()):
        bad = int(missing.all(axis=1).sum())
        raise DataError(f"data has {bad} point(s) with no observed value", "not_finite")
    unobserved = missing.all(axis=0)
    if columns and unobserved.any():
        empty = np.flatnonzero(unobserved).tolist()
        raise DataError(f"data has no observed value in dimension(s) {empty}", "zero_variance")


def padded_points(
    x: np.ndarray, std: Standardizer, size: int, covariance: str, complete: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x standardised into `size` rows of float32 (missing values and padding rows 0), the
    mask of what counts (rows for full and tied covariances, else coordinates: a missing one
    does not count) and, per dimension, how many values are observed. complete: whether x is
    known to miss no value (None: look)."""
    n, dim = x.shape
    padded = aligned_zeros((size, dim), np.float32)
    rows = 1 << 15  # a block at a time: whole-window temporaries cost more than the arithmetic
    buffer = np.empty(min(rows, n) * dim)
    group = row_group(dim)
    for i in range(0, n, rows):
        parts = grouped_rows(x[i : i + rows], group)
        targets = grouped_rows(padded[i : i + min(rows, n - i)], group)  # views: padded's own
        for (part, repeat), (target, _) in zip(parts, targets, strict=True):
            centred = np.subtract(
                part, np.tile(std.mean, repeat), out=buffer[: part.size].reshape(part.shape)
            )
            # Divided in float64 and rounded once into the float32 rows, as std.points(x) is.
            np.divide(centred, np.tile(std.std, repeat), out=target, casting="same_kind")
    if complete is None:
        flat = padded[:n].reshape(-1)
        # One BLAS pass settles the common case: a NaN (missing) makes the sum of squares NaN.
        # (An overflow to infinity only takes the exact path below.)
        complete = bool(np.isfinite(np.dot(flat, flat)))
    observed = None if complete else ~np.isnan(padded[:n])
    if observed is not None:
        padded[:n][~observed] = 0.0
    if is_cholesky(covariance):
        mask = np.arange(size) < n
    else:
        mask = np.zeros((size, dim), bool)
        mask[:n] = True if observed is None else observed
    counts = np.full(dim, n) if observed is None else observed.sum(axis=0)
    return padded, mask, counts


#: Alignment that lets a CPU device use a host array in place (`_on_devices`).
ALIGN = 64


def aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """np.zeros(shape, dtype) starting on an ALIGN-byte boundary: a CPU device then takes it
    without a copy (a copy of a 1M x 8 window cost 20-30 ms of a 0.4 s refit)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _on_devices(array: Any, mesh: Any) -> Any:
    """The array (or a tuple of arrays, in one transfer) on the default device, or split by
    rows over the mesh's devices."""
    if mesh is None:
        # The array is the window's own and never written again: the device may alias it.
        return jax.device_put(array, may_alias=True)
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])))


def fit_covariance(covariance: str, dim: int) -> str:
    """In one dimension a full covariance is a scale: tied/full fit as tied-diag/diag."""
    if dim == 1 and is_cholesky(covariance):
        return {"tied": "tied-diag", "full": "diag"}[covariance]
    return covariance


class FitWindow(NamedTuple):
    """A window as the fit's programs take it (`prepare_window`)."""

    x: np.ndarray  # (N, D) float64, data units: the points fitted
    covariance: str  # the type fitted (`fit_covariance`)
    std: Standardizer
    priors: Priors  # data units
    priors_z: Priors  # standardised, float32 arrays
    points: Any  # (padded_size(N), D) float32, standardised; missing and padding values 0
    mask: Any  # (padded,) rows that count, or (padded, D) coordinates observed (diagonal types)
    n_observed: np.ndarray  # (D,) float32: how many points observe each coordinate
    offset: float  # the log-Jacobian that takes standardised losses to data units
    #: Points fitted, every process's (None: x's); across processes (`mixture.fit_hosts`),
    #: x is this process's part and these describe the parts.
    n_points: int | None = None
    local_sizes: tuple[int, ...] | None = None  # each process's points
    local_points: np.ndarray | None = None  # this process's points, standardised (float32)
    local_mask: np.ndarray | None = None  # and their mask

    @property
    def n(self) -> int:
        return int(self.x.shape[0]) if self.n_points is None else self.n_points

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @classmethod
    def of(
        cls,
        x: np.ndarray,
        config: FitConfig,
        covariance: str,
        std: Standardizer,
        stats: tuple[np.ndarray, np.ndarray],
        priors: Priors | None,
        n: int,
        counts: np.ndarray,
        padded: tuple[Any, Any],
        **parts: Any,
    ) -> FitWindow:
        """A window from its points, their standardiser and column stats (mean, standard
        deviation): the priors (config.priors' when none are given) in both units, the observed
        counts and the loss offset derived from them; `padded`: (points, mask) as the programs
        take them; `parts`: the fields of a window across processes."""
        if priors is None:
            priors = seed_priors(x.shape[1]) if config.priors == "seed" else data_priors(x, stats)
        return cls(
            x=x,
            covariance=covariance,
            std=std,
            priors=priors,
            # One transfer for them all (each jnp.asarray was a dispatch of its own).
            priors_z=jax.device_put(
                Priors(*(np.asarray(v, np.float32) for v in std.priors(priors)))
            ),
            points=padded[0],
            mask=padded[1],
            n_observed=np.asarray(counts, np.float32),
            offset=std.loss_offset(n, config.n_components, covariance, counts),
            **parts,
        )

    def sample(self, key: Any, size: int) -> tuple[Any, Any, int]:
        """(points, mask, n) of `size` points drawn with replacement, padded as windows are,
        or the whole window when it has at most `size` points. (A window across processes
        takes `mixture.fit_hosts.scoring_sample` instead.)"""
        if self.n <= size:
            return self.points, self.mask, self.n
        points, mask = _draw(key, self.points, self.mask, np.int32(self.n), size)
        return points, mask, size


@functools.partial(jax.jit, static_argnames="size")
def _draw(key: Any, points: Any, mask: Any, n: Any, size: int) -> tuple[Any, Any]:
    """`size` rows drawn with replacement from the first n, padded as windows are: one program
    (drawn op by op, the draw's eight dispatches cost a 1-D refit of 100k points 2 ms)."""
    pick = jax.random.randint(key, (size,), 0, n)
    padded = padded_size(size)
    drawn = jnp.zeros((padded, points.shape[1]), jnp.float32).at[:size].set(points[pick])
    drawn_mask = jnp.zeros((padded, *mask.shape[1:]), bool).at[:size].set(mask[pick])
    return drawn, drawn_mask


def prepare_window(
    data: Any, config: FitConfig, priors: Priors | None = None, mesh: Any = None
) -> FitWindow:
    """Validates `data` ((N,) or (N, D); NaN: missing) for a fit of `config` and standardises,
    pads and masks it. Full and tied covariances fit the complete points only (see the README).
    priors: explicit priors (data units); by default config.priors chooses the seed's or
    data-relative ones. mesh: devices of this process to shard the points over (a mesh over
    several processes: `mixture.fit_hosts.prepare_across_processes`). Raises DataError with a
    one-line reason."""
    x, stats, complete = checked_points(data, config.n_components)
    covariance = fit_covariance(config.covariance, x.shape[1])
    if is_cholesky(covariance):
        missing = not complete  # most windows miss nothing
        if missing:
            x = x[~np.isnan(x).any(axis=1)]
        needed = (x.shape[1] + 1) * config.n_components
        if len(x) < needed:
            raise DataError(
                f"{len(x)} complete point(s): a {config.covariance} fit of K="
                f"{config.n_components} in D={x.shape[1]} needs at least {needed}",
                "too_few_points",
            )
        if missing:  # what is left must still vary
            x, stats, complete = checked_points(x, config.n_components)
    n = len(x)
    std = Standardizer.of(x, covariance, stats)
    shards = 1 if mesh is None else mesh.size
    size = padded_size(n) if shards == 1 else shards * padded_size(-(-n // shards))
    padded, mask, counts = padded_points(x, std, size, covariance, complete)
    placed = _on_devices((padded, mask), mesh)
    return FitWindow.of(x, config, covariance, std, stats, priors, n, counts, placed)
