"""One fit over several processes (hosts): each holds its own part of the window.

With JAX's multi-controller runtime (`jax.distributed.initialize`), every process runs the same
fit on its own points: `prepare_across_processes` builds the FitWindow whose points are one
global array sharded over every process's devices, from statistics all processes agree on
(counts, column means and spreads, combined exactly as the one-array computation would), and
`scoring_sample` gives every process the same replicated sample to rank the starts on. The
steps then sum over the shards (`fit_programs.sum_over_points`), their psum crossing processes.
A process whose part is invalid makes every process raise the same DataError, never leaving the
others waiting in a collective.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from mixture.covariance import is_cholesky
from mixture.fit_data import (
    DataError,
    FitWindow,
    Standardizer,
    _check_values,
    fit_covariance,
    padded_points,
    padded_size,
)
from mixture.params import Priors
from mixture.process_group import AllProcesses

if TYPE_CHECKING:
    from mixture.fit_config import FitConfig


def spans_processes(mesh: Any) -> bool:
    """Whether a mesh holds devices of other processes."""
    return mesh is not None and any(
        d.process_index != jax.process_index() for d in mesh.devices.flat
    )


def gathered(value: Any) -> np.ndarray:
    """Every process's value (same shape on each), stacked in process order, bit for bit."""
    return AllProcesses().gather(np.asarray(value))


def join_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins JAX's multi-controller runtime as process `process_id` of `num_processes`, whose
    coordinator (process 0) listens at `coordinator` (host:port: on that address only, not on
    every interface); collectives between CPUs go over gloo. Neither authenticates its peers:
    run the processes on a network only they can reach. Call before any JAX computation;
    every process waits here for all the others (jax.distributed's timeout: 5 minutes)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=coordinator if process_id == 0 else None,
    )


def same_everywhere(description: str, value: bytes) -> None:
    """Raises DataError on every process unless every process gave the same value (e.g. a
    digest of its options): inputs meant to be identical are never checked by JAX itself."""
    digest = np.frombuffer(hashlib.sha256(value).digest(), np.uint32)
    if not (gathered(digest) == digest).all():
        raise DataError(f"the processes differ in {description}")


def agree(error: Exception | None) -> None:
    """Raises on every process when any process's part failed (its own error where it has one)."""
    failed = gathered(np.array([error is not None]))
    if failed.any():
        if error is not None:
            raise error
        first = int(np.flatnonzero(failed)[0])
        raise DataError(f"process {first}'s part of the window is not valid", "invalid_data")


def _combined_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over every process's points: per column, the observed count, mean and standard
    deviation (Chan et al.'s pairwise combination of each part's count, mean and sum of
    squared deviations: what one pass over all points would give, to rounding)."""
    observed = ~np.isnan(x)
    count = observed.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, np.nansum(x, axis=0) / np.maximum(count, 1), 0.0)
    m2 = np.zeros_like(mean)
    for i in range(0, len(x), 1 << 15):
        block = x[i : i + (1 << 15)] - mean
        m2 += np.nansum(block * block, axis=0)
    parts = gathered(np.stack([count, mean, m2]))  # (processes, 3, D)
    counts, means, m2s = parts[:, 0], parts[:, 1], parts[:, 2]
    total = counts.sum(axis=0)
    grand = (counts * means).sum(axis=0) / np.maximum(total, 1)
    spread = (m2s + counts * (means - grand) ** 2).sum(axis=0)
    return total, grand, np.sqrt(spread / np.maximum(total, 1))


def local_part(data: Any) -> np.ndarray:
    """This process's part of a window as a float64 (N, D) array (N may be 0), checked as
    `as_points` checks a window except for what only the union can say (too few points, a
    column without spread): a DataError on every process when any part is not valid, and when
    the parts differ in dimension."""
    error: Exception | None = None
    x = np.zeros((0, 1))
    try:
        x = np.asarray(data, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] < 1:
            raise DataError(f"data must be (N,) or (N, D); got shape {x.shape}")
        _check_values(x, columns=False)  # a column's values may all lie in other parts
    except Exception as exc:  # any failure here fails every process, none left waiting
        error = exc if isinstance(exc, DataError) else DataError(f"data must be numbers ({exc})")
    agree(error)
    dims = gathered(np.array([x.shape[1]]))
    if len(set(dims.ravel().tolist())) != 1:
        raise DataError(f"the processes' points differ in dimension: {dims.ravel().tolist()}")
    return x


def prepare_across_processes(
    data: Any, config: FitConfig, priors: Priors | None, mesh: Any
) -> FitWindow:
    """`prepare_window` for a mesh over several processes: `data` is this process's part (it
    may be empty). Every process must have the same number of devices in the mesh."""
    x = local_part(data)
    covariance = fit_covariance(config.covariance, x.shape[1])
    if is_cholesky(covariance):
        x = x[~np.isnan(x).any(axis=1)]
    sizes = gathered(np.array([len(x)])).ravel()
    n = int(sizes.sum())
    needed = (x.shape[1] + 1) * config.n_components if is_cholesky(covariance) else 2
    if n < max(needed, config.n_components):
        raise DataError(
            f"{n} point(s) cannot fit {config.n_components} components", "too_few_points"
        )
    counts, mean, std = _combined_stats(x)
    if not counts.all():
        empty = np.flatnonzero(counts == 0).tolist()
        raise DataError(f"data has no observed value in dimension(s) {empty}", "zero_variance")
    if not np.all(std > 0):
        dims_ = np.flatnonzero(~(std > 0)).tolist()
        raise DataError(f"data has zero variance (dimension(s) {dims_})", "zero_variance")
    scaler = Standardizer.of(x, covariance, (mean, std))
    local = len(mesh.local_devices)
    shard = padded_size(-(-int(sizes.max()) // local))
    padded, mask, _ = padded_points(x, scaler, local * shard, covariance)
    placed = (_global(padded, mesh), _global(mask, mesh))
    return FitWindow.of(
        x,
        config,
        covariance,
        scaler,
        (mean, std),
        priors,
        n,
        counts,
        placed,
        n_points=n,
        local_sizes=tuple(int(s) for s in sizes),
        local_points=padded[: len(x)],
        local_mask=mask[: len(x)],
    )


def _global(local: np.ndarray, mesh: Any) -> Any:
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.make_array_from_process_local_data(sharding, local)


def scoring_sample(window: FitWindow, key: Any, size: int) -> tuple[Any, Any, int]:
    """`FitWindow.sample` across processes: the same (points, mask, n) on every process, a
    replicated array. Up to `size` points: every point, in process order (as the one-array
    window holds them); more: `size` drawn with replacement, each process drawing its share
    (in proportion to its points) from its own."""
    assert window.local_sizes is not None  # a window of prepare_across_processes
    assert window.local_points is not None and window.local_mask is not None
    local_points, local_mask = window.local_points, window.local_mask
    sizes = np.asarray(window.local_sizes)
    n = int(sizes.sum())
    if n <= size:
        take = sizes
        rows = np.arange(len(local_points))
    else:
        # Whole shares that sum to `size`, none for a process without points.
        take = np.diff((size * np.cumsum(sizes)) // n, prepend=0)
        me = jax.process_index()
        own = jax.random.fold_in(key, me)
        rows = np.asarray(jax.random.randint(own, (int(take[me]),), 0, max(int(sizes[me]), 1)))
    most = int(take.max())
    points = np.zeros((most, local_points.shape[1]), np.float32)
    mask = np.zeros((most, *local_mask.shape[1:]), np.bool_)
    points[: len(rows)] = local_points[rows]
    mask[: len(rows)] = local_mask[rows]
    all_points, all_masks = gathered(points), gathered(mask)
    total = int(take.sum())
    padded = padded_size(total)
    out_points = np.zeros((padded, points.shape[1]), np.float32)
    out_mask = np.zeros((padded, *mask.shape[1:]), np.bool_)
    out_points[:total] = np.concatenate([p[:t] for p, t in zip(all_points, take, strict=True)])
    out_mask[:total] = np.concatenate([m[:t] for m, t in zip(all_masks, take, strict=True)])
    return jnp.asarray(out_points), jnp.asarray(out_mask), total
