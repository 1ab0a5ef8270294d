"""MAP fit of the mixture's globals: SVI + TraceEnum_ELBO + AutoDelta + optax, as one driver.

`fit_map` prepares the window (`mixture.fit_data`: standardised, padded, masked), scores
config.n_init candidates in one vmapped pass of the loss (k-means++ seeded, with the current
model in one slot for refits), optimises the best config.n_best together and keeps the lowest
final loss. Its programs and their cache are `mixture.fit_programs.FitPrograms`'.

Steps are EM-preconditioned (`mixture.precondition`: the gradient of the same SVI loss, scaled
as Xu and Jordan show EM's step is), for cold fits and for refits whose warm start scores best:
a few full passes instead of Adam's hundreds (bench/results/fit.md). `FitConfig(cold_em=False)`
gives Adam's steps, which the tutorial plots. A chunk of steps runs as one program; between
chunks the driver stops a candidate that has settled or is hopelessly behind the best.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixture.fit_config import INITS, FitConfig, InitChoice, PriorsChoice, warm_step
from mixture.fit_data import (
    MIN_PADDED,
    POINT_BLOCK,
    DataError,
    FitWindow,
    Standardizer,
    as_points,
    fit_covariance,
    padded_size,
    point_block,
    prepare_window,
)
from mixture.fit_hosts import prepare_across_processes, scoring_sample, spans_processes
from mixture.fit_programs import FitPrograms, point_mesh
from mixture.params import FitMetadata, MixtureParams, ModelParams, Priors
from mixture.sites import serving_to_sites, sites_to_serving

__all__ = [
    "INITS",
    "MIN_PADDED",
    "POINT_BLOCK",
    "DataError",
    "FitConfig",
    "FitPrograms",
    "FitResult",
    "FitWindow",
    "InitChoice",
    "PriorsChoice",
    "Standardizer",
    "as_points",
    "default_programs",
    "distinct_best",
    "fit_compilations",
    "fit_covariance",
    "fit_map",
    "padded_size",
    "point_block",
    "prepare_window",
    "to_model_params",
    "use_fit_devices",
    "use_fit_processes",
    "use_program_cache",
    "warm_step",
]

_log = logging.getLogger(__name__)

_default: FitPrograms | None = None


def default_programs() -> FitPrograms:
    """The process's FitPrograms for callers that pass none (CLIs, notebooks, tests); built on
    first use."""
    global _default
    if _default is None:
        _default = FitPrograms()
    return _default


def fit_compilations() -> int:
    """Fit programs traced (or loaded from the program cache) and compiled so far by the
    default FitPrograms."""
    return default_programs().compilations


def use_program_cache(directory: Any) -> None:
    """Keeps the default FitPrograms' traced programs under `directory` (None: off); see
    `FitPrograms.use_cache`. Composition roots call it at start-up, beside JAX's cache."""
    default_programs().use_cache(directory)


def use_fit_devices(count: int = 0) -> int:
    """Shards the default FitPrograms' windows over the first `count` local devices (0: all;
    1: none, one device); returns how many are used.

    CPU devices are never sharded over: the host devices XLA_FLAGS forces share one intra-op
    thread pool, and jaxlib's batched LAPACK kernels (the full and tied covariance steps'
    solve, eigh and Cholesky) wait on that pool for their own tasks: with two devices in them
    at once on a 2-CPU host every thread waited and the fit never returned (D=8, K=4, full,
    4 or 10 candidates; found in a stack dump, both pool threads in LuDecomposition's
    ParallelBatchMap). Processes (`use_fit_processes`) use several CPUs instead."""
    devices = jax.local_devices()
    devices = devices[: count or len(devices)]
    if len(devices) > 1 and devices[0].platform == "cpu":
        _log.warning(
            "fitting on one of %d CPU devices: forced host devices share one thread pool, and "
            "XLA's batched LAPACK kernels can deadlock on it; run several processes instead",
            len(devices),
        )
        devices = devices[:1]
    default_programs().use_mesh(point_mesh(devices) if len(devices) > 1 else None)
    return len(devices)


def use_fit_processes() -> int:
    """Shards the default FitPrograms' windows over every device of every process (after
    `fit_hosts.join_processes`): `fit_map` and `fit_robust` then take this process's part of
    the window and fit the union. Returns the devices used."""
    default_programs().use_mesh(point_mesh())
    return len(jax.devices())


class FitResult(NamedTuple):
    """A fitted mixture in data units, with the monitoring the tutorial plots."""

    params: MixtureParams  # numpy arrays, serving form
    priors: Priors
    init_loss: float  # the winning candidate's initial loss, data units
    losses: np.ndarray  # per step, data units (the winning candidate)
    grad_norms: dict[str, np.ndarray]  # per step, per global (unconstrained gradients)
    n_steps: int
    converged: bool
    seconds: float
    covariance: str = "tied-diag"
    #: Final loss of every candidate optimised (data units), the winner's among them.
    candidate_losses: tuple[float, ...] = ()
    #: Points in the window fitted (complete points only for full and tied covariances).
    n_points: int = 0

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def points_per_second(self) -> float:
        """Window points fitted per second of the whole fit (preparation included)."""
        return self.n_points / self.seconds if self.seconds > 0 else 0.0


class _Run(NamedTuple):
    """How the chosen candidates are optimised (cold fit or warm refit)."""

    warm: bool  # the warm start won and alone is optimised
    em: bool  # EM-preconditioned steps (else Adam's)
    chunk: int  # steps per program call
    min_steps: int
    max_steps: int

    @classmethod
    def of(cls, config: FitConfig, warm: bool) -> _Run:
        em = config.warm_em if warm else config.cold_em
        if em:
            chunk = config.em_chunk_steps if warm else config.cold_em_chunk_steps
            return cls(warm, True, chunk, chunk, config.em_max_steps)
        if warm:
            return cls(
                True, False, config.warm_chunk_steps, config.warm_min_steps, config.max_steps
            )
        return cls(False, False, config.chunk_steps, config.min_steps, config.max_steps)


def fit_map(
    data: Any,
    key: Any,
    config: FitConfig = FitConfig(),  # noqa: B008 (frozen, never mutated)
    *,
    warm_start: MixtureParams | None = None,
    priors: Priors | None = None,
    progress: Callable[[int, float], None] | None = None,
    explore: bool = False,
    programs: FitPrograms | None = None,
) -> FitResult:
    """Fits the MAP globals to data ((N,) or (N, D)): the config.n_best best of config.n_init
    candidates are optimised together, and the lowest final loss wins.

    key: a jax.random key (passed explicitly; the fit is deterministic given it).
    warm_start: a current model (data units, serving form, any covariance type) to take one
        candidate's place, for refits; if it scores best it alone is optimised.
    priors: explicit priors; by default config.priors chooses the seed's or data-relative ones.
    progress: called as progress(step, loss) after each chunk, for terminals and logs.
    explore: optimise the best cold candidates beside the warm start even when it scores best.
        A warm start alone only reaches the optimum nearest to it: a model stuck in a poor
        local optimum (two components on one cluster, one across two) would otherwise outscore
        every random start, and be refitted into itself, at every refit. The trainer explores
        every GMM_TRAIN_EXPLORE_EVERY versions.
    programs: the FitPrograms to run on (default: `default_programs()`).
    """
    t0 = time.perf_counter()
    programs = programs or default_programs()
    # A mesh over several processes: `data` is this process's part of the window.
    across = spans_processes(programs.mesh)
    if across:
        window = prepare_across_processes(data, config, priors, programs.mesh)
    else:
        window = prepare_window(data, config, priors, programs.mesh)
    n, dim, k = window.n, window.dim, config.n_components

    def run(name: str, *args: Any, **static: Any) -> Any:
        return programs.run(config, dim, name, *args, **static)

    init_key, svi_key, pick_key, sampled_init_key = _split_keys(key)
    warm, use_warm = _warm_sites(window, config, warm_start)
    # A refit that explores looks for a better optimum: it ranks on the full sample.
    sample_size = config.refit_score_points if use_warm and not explore else config.score_points
    if n > sample_size:  # the scoring sample is drawn with a key of its own
        init_key = sampled_init_key
    else:
        pick_key = None
    if across:  # the same sample on every process
        score_at, score_mask, score_n = scoring_sample(window, pick_key, sample_size)
    else:
        score_at, score_mask, score_n = window.sample(pick_key, sample_size)
    # Ranks the starts; for a bigger window these losses are on the scoring sample only.
    values, losses0 = run(
        "candidates",
        init_key,
        score_at,
        np.int32(score_n),
        window.priors_z,
        score_mask,
        warm,
        np.bool_(use_warm),
        np.bool_(not use_warm or explore),
    )
    losses0 = np.asarray(losses0, np.float64)
    order = np.argsort(losses0, kind="stable")
    how = _Run.of(config, bool(use_warm and order[0] == 0 and not explore))
    chosen = order[:1] if how.warm else distinct_best(losses0, config.n_best)
    states = run(
        "init_states",
        svi_key,
        values,
        jnp.asarray(chosen),
        np.float32(warm_step(config, n) if how.warm else config.learning_rate),
        np.bool_(how.em),
        np.float32(n),
        window.n_observed,
        window.points,
        window.priors_z,
        window.mask,
    )
    states, losses, norms, converged = _optimise(run, states, window, config, how, progress)
    final = np.where(np.isfinite(losses[:, -1]), losses[:, -1], np.inf)
    win = int(np.argmin(final))
    sites = {name: np.asarray(v) for name, v in run("winner", states, np.int32(win)).items()}
    fitted_z = sites_to_serving(sites, window.covariance, config.reg_covar, k)
    params = window.std.params_to_data(fitted_z)
    if window.covariance != config.covariance:  # one-dimensional tied/full: 1x1 factors
        params = params._replace(
            scale=np.broadcast_to(params.scale, params.locs.shape)[..., None].copy()
        )
    offset = window.offset
    return FitResult(
        params=params,
        priors=window.priors,
        init_loss=float(losses[win, 0]) + offset,  # a step's loss is at its starting point
        losses=losses[win] + offset,
        grad_norms={name: v[win] for name, v in norms.items()},
        n_steps=losses.shape[1],
        converged=converged,
        seconds=time.perf_counter() - t0,
        covariance=config.covariance,
        candidate_losses=tuple(float(v) + offset for v in final),
        n_points=n,
    )


@jax.jit
def _split_keys(key: Any) -> tuple[Any, Any, Any, Any]:
    """The fit's keys from its key: (init, svi) = split(key), and (pick, init after a scoring
    sample) = split(init). One program: split eagerly, one by one, they cost a small refit's
    host ~1 ms of dispatches."""
    init_key, svi_key = jax.random.split(key)
    pick_key, sampled_init_key = jax.random.split(init_key)
    return init_key, svi_key, pick_key, sampled_init_key


def distinct_best(losses: np.ndarray, count: int, rtol: float = 1e-6) -> np.ndarray:
    """The indices of the `count` lowest losses, taking one of each group of equal losses
    (within rtol) first: k-means moves many seeds to the same solution, and optimising copies
    of one start would waste the slots other optima need. Copies fill what is left."""
    order = np.argsort(losses, kind="stable")
    picked: list[int] = []
    for i in order:
        if len(picked) == count:
            break
        if np.isfinite(losses[i]) and all(
            abs(losses[i] - losses[j]) > rtol * max(1.0, abs(losses[j])) for j in picked
        ):
            picked.append(int(i))
    rest = [int(i) for i in order if int(i) not in picked]
    return np.asarray((picked + rest)[:count], dtype=order.dtype)


def _warm_sites(
    window: FitWindow, config: FitConfig, warm_start: MixtureParams | None
) -> tuple[dict[str, Any], bool]:
    """The warm start as site values (standardised), and whether it can start this fit (a
    model of another K or D, which the trainer never passes, or an unusable one cannot)."""
    k, dim = config.n_components, window.dim
    use = warm_start is not None and warm_start.locs.shape == (k, dim)
    if warm_start is not None and use:
        try:
            sites = serving_to_sites(
                window.std.params_from_data(warm_start), window.covariance, config.reg_covar
            )
            return sites, True
        except (np.linalg.LinAlgError, ValueError):  # not a usable start: fit without it
            pass
    placeholder = MixtureParams(np.full(k, 1.0 / k), np.zeros((k, dim)), np.ones(dim))
    return serving_to_sites(placeholder, window.covariance, config.reg_covar), False


def _optimise(
    run: Callable[..., Any],
    states: Any,
    window: FitWindow,
    config: FitConfig,
    how: _Run,
    progress: Callable[[int, float], None] | None,
) -> tuple[Any, np.ndarray, dict[str, np.ndarray], bool]:
    """Runs chunks of steps until every candidate has settled, gone non-finite or fallen
    hopelessly behind the best, or the step cap. Returns the states, the losses (candidates,
    steps; standardised units), the gradient norms per global (same shape) and whether the
    fit converged."""
    n = window.n
    loss_chunks: list[np.ndarray] = []
    norm_chunks: list[dict[str, np.ndarray]] = []
    converged, steps, prev = False, 0, None
    while steps < how.max_steps:
        # A warm refit's first chunk tells the first step's change only; one step more tells
        # the second's, which from a warm start has nearly always settled (scikit-learn's EM
        # stops after as many steps). Later chunks are whole again.
        length = 1 if how.em and how.warm and steps == how.chunk else how.chunk
        states, (chunk_losses, chunk_norms) = run(
            "run_chunk", states, window.points, window.priors_z, window.mask, length=length
        )
        chunk_losses = np.asarray(chunk_losses, dtype=np.float64)  # (candidates, steps)
        loss_chunks.append(chunk_losses)
        norm_chunks.append({name: np.asarray(v) for name, v in chunk_norms.items()})
        steps += length
        mean = chunk_losses.mean(axis=1)
        if progress is not None:
            progress(steps, float(np.min(chunk_losses[:, -1])) + window.offset)
        finite = np.isfinite(mean)
        if not finite.any():
            break
        if how.em:
            # EM steps settle within a chunk: compare the last two steps' losses. A candidate
            # whose distance to the best exceeds em_prune_steps of its last steps' gains would
            # not draw level at that rate: it no longer holds the fit.
            recent = np.concatenate(loss_chunks[-2:], axis=1)[:, -how.chunk :]
            last = recent[:, -1]
            ok = np.isfinite(last)
            tol = config.refit_tol if how.warm else config.warm_tol
            settled = np.abs(last - recent[:, -2]) <= tol * n
            gain = np.maximum(recent[:, 0] - last, 0.0) / (recent.shape[1] - 1)
            behind = last - np.min(np.where(ok, last, np.inf)) > config.em_prune_steps * gain
            if np.all(settled | ~ok | behind):
                converged = True
                break
        elif prev is not None and steps >= how.min_steps:
            change = np.abs(mean - prev) <= config.tol * np.maximum(1.0, np.abs(mean))
            if how.warm:
                change |= np.abs(mean - prev) <= config.warm_tol * n
            # Candidates that went non-finite or are hopelessly behind are out of the running;
            # the rest must settle.
            best = np.min(np.where(finite, mean, np.inf))
            behind = mean - best > config.prune_chunks * np.maximum(prev - mean, 0.0)
            if np.all(change | ~finite | behind):
                converged = True
                break
        prev = mean
    norms = {
        name.removesuffix("_auto_loc"): np.concatenate([c[name] for c in norm_chunks], axis=1)
        for name in norm_chunks[0]
    }
    return states, np.concatenate(loss_chunks, axis=1), norms, converged


def to_model_params(
    result: FitResult, version: int, n_points: int, fitted_at: str, **extra: Any
) -> ModelParams:
    """Wraps a fit as a versioned ModelParams with its provenance."""
    meta = FitMetadata(
        fitted_at=fitted_at,
        n_points=n_points,
        final_loss=result.final_loss,
        fit_seconds=round(result.seconds, 4),
        priors=result.priors.to_json(),
        extra={
            "init_loss": result.init_loss,
            "n_steps": result.n_steps,
            "converged": result.converged,
            **extra,
        },
    )
    return ModelParams(version, result.params, meta, result.covariance)
