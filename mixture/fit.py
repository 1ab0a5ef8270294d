"""MAP fit of the mixture's globals: SVI + TraceEnum_ELBO + AutoDelta + optax Adam.

The fit runs in standardised coordinates (each dimension centred and scaled by the data's own
mean and standard deviation), with the priors mapped along. This is an exact change of variables:
the MAP point maps back unchanged and the loss differs by a constant log-Jacobian, which is added
back so that reported losses are in the data's units. It makes Adam's fixed learning rate suit
data at 10^4 as well as data at 0-12.

Initialisation follows the tutorial (uniform weights, scale sqrt(var/2), locs drawn from the
data) but evaluates all candidates in one vmapped, jitted ELBO pass. Convergence is a relative
tolerance on the loss between chunks of steps, with a step cap. Compiled programs are cached per
static configuration, so a refit of the same window size never recompiles.

A refit whose warm start (the current model) scores best takes EM-preconditioned steps of the
same SVI loss instead of Adam's (mixture.precondition): a few full passes instead of Adam's many
(bench/results/fit.md, the warm refits).
With `use_program_cache`, the traced programs are kept on disk for later processes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mixture.covariance import DEFAULT_REG_COVAR, check_covariance, is_cholesky
from mixture.covariance_forms import FORMS
from mixture.params import (
    FitMetadata,
    MixtureParams,
    ModelParams,
    Priors,
    column_stats,
    data_priors,
    seed_priors,
)
from mixture.points import MAX_ABS
from mixture.program_cache import ProgramCache, source_salt
from mixture.sites import global_sites, serving_to_sites, sites_to_serving

if TYPE_CHECKING:
    import optax
    from numpyro.infer import SVI
    from numpyro.infer.autoguide import AutoDelta

# NumPyro, optax and the model are imported where the programs are built (_program): a process
# that loads them from the program cache never needs them, and importing them is a good part of
# a short CLI fit's time.

PriorsChoice = Literal["data", "seed"]

#: Fit programs take windows padded (and masked) up to one of these sizes: 2^j and 3 * 2^(j-1),
#: at least MIN_PADDED, so windows of any size reuse a few programs (at most a third wasted).
MIN_PADDED = 256

#: How many programs the fit has traced and compiled (the trainer exports it as a metric).
_compilations = 0


#: Where traced fit programs are kept for later processes (None: each process traces its own).
_program_cache: ProgramCache | None = None

#: The modules whose code shapes the fit's programs (their source salts the program cache).
_PROGRAM_SOURCES = (
    "mixture.fit",
    "mixture.model",
    "mixture.sites",
    "mixture.precondition",
    "mixture.params",
    "mixture.covariance",
    "mixture.covariance_forms",
)


def fit_compilations() -> int:
    """Fit programs traced (or loaded from the program cache) and compiled so far in this
    process."""
    return _compilations


def use_program_cache(directory: str | os.PathLike[str] | None) -> None:
    """Keeps the fit's traced programs under `directory` (mixture.program_cache), so that a new
    process loads them instead of tracing NumPyro's model again (most of a small fit's time
    from a new process). Composition roots call it at start-up, beside JAX's compilation cache;
    None turns it off (every process traces its own). Safe to delete at any time."""
    global _program_cache
    if directory is None:
        _program_cache = None
        return
    cache = ProgramCache(directory, source_salt(*_PROGRAM_SOURCES))
    cache.prune()  # earlier code's programs are never loaded again
    # An unusable directory (warned about once) leaves tracing as it was: exporting programs
    # that no later process could read would only cost time.
    _program_cache = cache if cache.persistent else None


def _count_compilation() -> None:
    # Runs only while tracing: exactly one increment per compiled program.
    global _compilations
    _compilations += 1


def padded_size(n: int) -> int:
    """The padded window size for n points (see MIN_PADDED)."""
    size = MIN_PADDED
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


class DataError(ValueError):
    """Data that cannot be fit; the message says why in one line, `reason` as a short code."""

    def __init__(self, message: str, reason: str = "invalid_data") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Static settings of a fit (each distinct value compiles its own programs)."""

    n_components: int = 2
    #: One of mixture.covariance.COVARIANCES (aliases accepted).
    covariance: str = "tied-diag"
    #: Covariance floor, relative to each column's variance.
    reg_covar: float = DEFAULT_REG_COVAR
    priors: PriorsChoice = "data"
    #: Random initial candidates, all scored in one vmapped ELBO pass.
    n_init: int = 100
    #: Candidates are scored on at most this many points (drawn at random from a bigger window):
    #: ranking starts needs no more, and on 1M points scoring 100 candidates on all of them
    #: cost several times the whole optimisation. The winners are then optimised on every point.
    score_points: int = 16384
    #: The best-scoring n_best candidates are optimised together (vmapped) and the lowest final
    #: loss wins: one start can settle in a worse optimum when K >= 3.
    n_best: int = 4
    learning_rate: float = 0.1
    #: Starting step size when the warm start wins (and alone is optimised): from near the
    #: optimum, Adam's first steps (each of about the step size in every coordinate) would
    #: otherwise kick the parameters away. The new window's optimum lies about 1/sqrt(N) from
    #: the last one (standardised units), so the step is warm_step_points / sqrt(N), at most
    #: warm_learning_rate: 0.003 at 1M points (measured: 10 steps of 0.01 there left the D=8
    #: full refit 1e-3 nats per point short of scikit-learn's, 20 steps of 0.003 1e-5).
    warm_learning_rate: float = 0.01
    warm_step_points: float = 3.0
    b1: float = 0.8
    b2: float = 0.99
    #: Adam's step size halves every this many steps (down to 1e-3 of the start): a fixed step
    #: keeps Adam circling the optimum at the step's own scale, so the loss never settles.
    lr_half_life_steps: int = 100
    #: Stop when the mean loss of a chunk changes by less than tol * max(1, |loss|).
    tol: float = 1e-6
    #: A candidate behind the best by more than prune_chunks times its own last improvement
    #: (it would need that many more chunks at its present rate just to draw level) is out of
    #: the running: the fit no longer waits for it to settle. Slow, hopeless candidates (a
    #: component sliding towards zero weight) otherwise held cold fits for thousands of steps.
    prune_chunks: float = 10.0
    chunk_steps: int = 25
    min_steps: int = 50
    #: A refit that starts from the current model (the trainer's steady state) is already near
    #: its optimum: it checks every warm_chunk_steps, from warm_min_steps, and stops when the
    #: mean loss per point changes by less than warm_tol nats between checks (scikit-learn's
    #: EM stops at 1e-3 per point per iteration).
    warm_chunk_steps: int = 5
    warm_min_steps: int = 10
    warm_tol: float = 1e-5
    #: A refit whose warm start wins takes EM-preconditioned steps (mixture.precondition)
    #: instead of Adam's: a few passes instead of 20-30. Checked every em_chunk_steps (>= 2),
    #: stopping when the last step changed the loss by less than warm_tol nats per point, or
    #: after em_max_steps.
    warm_em: bool = True
    em_chunk_steps: int = 2
    em_max_steps: int = 200
    max_steps: int = 5000

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariance", check_covariance(self.covariance))
        if min(self.n_components, self.n_init, self.n_best, self.score_points) < 1:
            raise ValueError("n_components, n_init, n_best and score_points must be >= 1")
        if self.reg_covar < 0:
            raise ValueError(f"reg_covar must be >= 0, got {self.reg_covar}")
        if not 2 <= self.em_chunk_steps <= self.em_max_steps:
            raise ValueError(
                "em_chunk_steps must be >= 2 and at most em_max_steps, got "
                f"{self.em_chunk_steps} and {self.em_max_steps}"
            )
        if min(self.chunk_steps, self.max_steps, self.warm_chunk_steps) < 1:
            raise ValueError("chunk_steps, warm_chunk_steps and max_steps must be >= 1")


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

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


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
    try:
        x = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("data must be numbers: a list of points or an (N, D) array") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(f"data must be (N,) or (N, D); got shape {x.shape}")
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
    unobserved = missing.all(axis=0) if missing.any() else np.zeros(x.shape[1], bool)
    if unobserved.any():
        empty = np.flatnonzero(unobserved).tolist()
        raise DataError(f"data has no observed value in dimension(s) {empty}", "zero_variance")
    if n_components is not None and x.shape[0] < n_components:
        raise DataError(
            f"{x.shape[0]} point(s) cannot fit {n_components} components", "too_few_points"
        )
    std = column_stats(x)[1] if x.shape[0] >= 2 else np.zeros(x.shape[1])
    if x.shape[0] < 2 or not np.all(std > 0):
        dims = np.flatnonzero(~(std > 0)).tolist() if x.shape[0] >= 2 else "all"
        raise DataError(
            f"data has zero variance (dimension(s) {dims}): nothing to separate", "zero_variance"
        )
    return x


class _Program(NamedTuple):
    svi: SVI
    sites: tuple[str, ...]
    candidates: Callable[..., Any]
    #: losses(values, points, priors, mask): the loss of each of a batch of site values.
    losses: Callable[..., Any]
    init_states: Callable[..., Any]
    run_chunk: Callable[..., Any]
    winner: Callable[..., Any]


class _StepState(NamedTuple):
    adam: Any
    count: Any
    # State, not constants, so that cold fits and warm refits share one program:
    lr0: Any  # Adam's starting step size
    em: Any  # True: EM-preconditioned steps instead of Adam's (mixture.precondition)
    n_points: Any  # the points the loss sums over (the EM step's N)
    n_observed: Any  # (D,) how many of them observe each coordinate
    norms: dict[str, Any]


def _optimizer(config: FitConfig, covariance: str) -> optax.GradientTransformation:
    """Adam whose step size starts at the state's lr0 and halves every lr_half_life_steps
    (down to 1e-3 of lr0), or, when the state's em flag is set, EM-preconditioned steps;
    either way recording each parameter's gradient norm for the reports."""
    import optax

    from mixture.precondition import em_update

    adam = optax.scale_by_adam(config.b1, config.b2)

    def init(params: Any) -> _StepState:
        return _StepState(
            adam.init(params),
            jnp.zeros((), jnp.int32),
            jnp.asarray(config.learning_rate, jnp.float32),
            jnp.zeros((), bool),
            jnp.ones((), jnp.float32),
            jnp.ones(params["locs_auto_loc"].shape[-1:], jnp.float32),
            {name: jnp.zeros(()) for name in params},
        )

    def update(grads: Any, state: _StepState, params: Any = None) -> Any:
        norms = {name: jnp.linalg.norm(g) for name, g in grads.items()}
        updates, adam_state = adam.update(grads, state.adam, params)
        decay = jnp.maximum(0.5 ** (state.count / config.lr_half_life_steps), 1e-3)
        step = -state.lr0 * decay
        updates = jax.tree.map(lambda u: step * u, updates)
        em = em_update(
            params,
            grads,
            covariance,
            config.n_components,
            config.reg_covar,
            state.n_points,
            state.n_observed,
        )
        updates = {
            name: jnp.where(state.em, em[name] - params[name], u) for name, u in updates.items()
        }
        next_state = state._replace(adam=adam_state, count=state.count + 1, norms=norms)
        return updates, next_state

    return optax.GradientTransformation(init, update)


def _fit_covariance(covariance: str, dim: int) -> str:
    """In one dimension a full covariance is a scale: tied/full fit as tied-diag/diag."""
    if dim == 1 and is_cholesky(covariance):
        return {"tied": "tied-diag", "full": "diag"}[covariance]
    return covariance


@functools.lru_cache(maxsize=32)
def _program(config: FitConfig, dim: int) -> _Program:
    """The jitted pieces of a fit, built once per static configuration and dimension (and
    compiled once per padded window size and number of candidates optimised)."""
    from numpyro import handlers
    from numpyro.infer import SVI, TraceEnum_ELBO
    from numpyro.infer.autoguide import AutoDelta

    from mixture.model import make_mixture_model

    k = config.n_components
    covariance = _fit_covariance(config.covariance, dim)
    model = make_mixture_model(k, covariance, config.reg_covar)
    sites = global_sites(covariance, k)
    # As in the tutorial: the guide sees only the globals; the seed handler feeds the local
    # sample sites the guide's prototype run passes through.
    global_model = handlers.block(
        handlers.seed(model, jax.random.PRNGKey(0)),
        hide_fn=lambda site: site.get("name") not in (*sites, "components"),
    )
    guide = AutoDelta(global_model)
    elbo = TraceEnum_ELBO()
    svi = SVI(model, guide, _optimizer(config, covariance), loss=elbo)

    state_def = _setup_prototype(svi, guide, k, dim)

    def guide_values(values: dict[str, Any]) -> dict[str, Any]:
        return {f"{name}_auto_loc": values[name] for name in sites}

    def loss_of(values: dict[str, Any], points: Any, priors: Priors, mask: Any) -> Any:
        return elbo.loss(
            jax.random.PRNGKey(0), guide_values(values), model, guide, points, priors, mask
        )

    @jax.jit
    def candidates(
        key: Any, points: Any, n_valid: Any, priors: Priors, mask: Any, warm: Any, use_warm: Any
    ) -> Any:
        """n_init candidates (warm start in slot 0 when use_warm) and their initial losses."""
        _count_compilation()
        values = initial_candidates(key, points, n_valid, config.n_init, k, covariance)
        values = {
            name: v.at[0].set(jnp.where(use_warm, warm[name].astype(v.dtype), v[0]))
            for name, v in values.items()
        }
        losses = jax.vmap(lambda v: loss_of(v, points, priors, mask))(values)
        return values, jnp.where(jnp.isfinite(losses), losses, jnp.inf)

    @jax.jit
    def losses(values: Any, points: Any, priors: Priors, mask: Any) -> Any:
        _count_compilation()
        return jax.vmap(lambda v: loss_of(v, points, priors, mask))(values)

    @jax.jit
    def init_states(
        key: Any,
        values: Any,
        chosen: Any,
        lr0: Any,
        em: Any,
        n_points: Any,
        n_observed: Any,
        points: Any,
        priors: Priors,
        mask: Any,
    ) -> Any:
        _count_compilation()
        starts = jax.tree.map(lambda v: v[chosen], values)
        keys = jax.random.split(key, chosen.shape[0])

        def one(key: Any, start: Any) -> Any:
            state = svi.init(key, points, priors, mask, init_params=guide_values(start))
            i, (params, opt) = state.optim_state
            opt = opt._replace(lr0=lr0, em=em, n_points=n_points, n_observed=n_observed)
            return state._replace(optim_state=(i, (params, opt)))

        return jax.tree.leaves(jax.vmap(one)(keys, starts))

    # The states cross the programs' boundaries as their leaves: a loaded program's inputs and
    # outputs then hold no NumPyro or optax types, which deserialising would need imported.
    @functools.partial(jax.jit, static_argnames="length")
    def run_chunk(leaves: Any, points: Any, priors: Priors, mask: Any, length: int) -> Any:
        _count_compilation()
        states = jax.tree.unflatten(state_def, leaves)

        def step(s: Any, _: Any) -> Any:
            s, loss = svi.update(s, points, priors, mask)
            return s, (loss, s.optim_state[1][1].norms)

        def chunk(state: Any) -> Any:
            return jax.lax.scan(step, state, None, length=length)

        states, out = jax.vmap(chunk)(states)
        return jax.tree.leaves(states), out

    @jax.jit
    def winner(leaves: Any, win: Any) -> Any:
        """The winning candidate's fitted site values (constrained)."""
        _count_compilation()
        states = jax.tree.unflatten(state_def, leaves)
        fitted = svi.get_params(jax.tree.map(lambda v: v[win], states))
        return {name: fitted[f"{name}_auto_loc"] for name in sites}

    return _Program(svi, sites, candidates, losses, init_states, run_chunk, winner)


def _run(config: FitConfig, dim: int, name: str, *args: Any, **static: Any) -> Any:
    """Runs the fit program `name` of _program(config, dim) on args, through the program cache
    when one is in use (then _program is built only if the program is not on disk)."""
    cache = _program_cache
    if cache is None:
        return getattr(_program(config, dim), name)(*args, **static)
    digest = hashlib.sha256(f"{config!r}|{dim}".encode()).hexdigest()[:16]
    label = f"fit.{name}.{digest}"
    fresh = cache.key(label, args, static) not in cache
    before = _compilations
    result = cache.call(label, lambda: getattr(_program(config, dim), name), args, static)
    if fresh and _compilations == before:  # loaded from disk rather than traced: still compiled
        _count_compilation()
    return result


def _setup_prototype(svi: SVI, guide: AutoDelta, k: int, dim: int) -> Any:
    """Sets the guide's prototype (the model's structure) up once, on dummy data.

    Run eagerly, that setup dispatches over a thousand small operations, each compiled on its
    own (most of a cold fit's time). Traced abstractly instead (`eval_shape`: nothing is
    compiled), it records the same structure; the only values the guide keeps from it, its
    initial locations, are replaced by concrete zeros of the same shapes (every fit passes its
    own starting values). Returns the SVI state's tree structure (the programs pass states as
    leaves).
    """
    state = jax.eval_shape(
        lambda p: svi.init(jax.random.PRNGKey(0), jnp.zeros((k, dim)), p), seed_priors(dim)
    )
    guide._init_locs = {
        name: jnp.zeros(np.shape(v), v.dtype) for name, v in guide._init_locs.items()
    }
    for site in guide.prototype_trace.values():
        if "value" in site and hasattr(site["value"], "aval"):
            site["value"] = jnp.zeros(np.shape(site["value"]), site["value"].dtype)
    return jax.tree.structure(state)


def initial_candidates(
    key: Any, points_z: Any, n_valid: Any, n_candidates: int, n_components: int, covariance: str
) -> dict[str, Any]:
    """The tutorial's initialisation, n_candidates at once, as site values: uniform weights,
    locs drawn with replacement from the first n_valid points (the rest is padding) of points_z
    (N, D), and the covariance type's initial scales (`CovarianceForm.initial_scale`: sqrt(var/2),
    identity correlations). Each value has a leading axis of n_candidates."""
    d = points_z.shape[1]
    c, k = n_candidates, n_components
    idx = jax.random.randint(key, (c, k), 0, n_valid)
    values = {
        "weights": jnp.full((c, k), 1.0 / k, points_z.dtype),
        "locs": points_z[idx],
        **FORMS[covariance].initial_scale(c, k, d, points_z.dtype),
    }
    return values


def fit_map(
    data: Any,
    key: Any,
    config: FitConfig = FitConfig(),
    *,
    warm_start: MixtureParams | None = None,
    priors: Priors | None = None,
    progress: Callable[[int, float], None] | None = None,
    explore: bool = False,
) -> FitResult:
    """Fits the MAP globals to data ((N,) or (N, D)): the config.n_best best of config.n_init
    candidates are optimised together, and the lowest final loss wins.

    key: a jax.random key (passed explicitly; the fit is deterministic given it).
    warm_start: a current model (data units, serving form, any covariance type) to take one
        candidate's place, for refits; if it scores best it alone is optimised, from
        warm_step(config, N).
    priors: explicit priors; by default config.priors chooses the seed's or data-relative ones.
    progress: called as progress(step, loss) after each chunk, for terminals and logs.
    explore: optimise the best cold candidates beside the warm start even when it scores best.
        A warm start alone only reaches the optimum nearest to it: a model stuck in a poor
        local optimum (two components on one cluster, one across two) would otherwise outscore
        every random start, and be refitted into itself, at every refit. The trainer explores
        every GMM_TRAIN_EXPLORE_EVERY versions.
    """
    t0 = time.perf_counter()
    x = as_points(data, config.n_components)
    covariance = _fit_covariance(config.covariance, x.shape[1])
    if is_cholesky(covariance):
        # Full and tied covariances fit the complete points only (see the README), and need
        # more of them than dimensions per component.
        incomplete = np.isnan(x).any(axis=1)
        if incomplete.any():
            x = x[~incomplete]
        needed = (x.shape[1] + 1) * config.n_components
        if len(x) < needed:
            raise DataError(
                f"{len(x)} complete point(s): a {config.covariance} fit of K="
                f"{config.n_components} in D={x.shape[1]} needs at least {needed}",
                "too_few_points",
            )
        if incomplete.any():  # what is left must still vary
            x = as_points(x, config.n_components)
    n, dim = x.shape
    stats = column_stats(x)
    if priors is None:
        priors = seed_priors(dim) if config.priors == "seed" else data_priors(x, stats)
    std = Standardizer.of(x, covariance, stats)
    size = padded_size(n)
    padded = np.zeros((size, dim), np.float32)
    observed = ~np.isnan(x)
    padded[:n] = std.points(x)
    if not observed.all():
        padded[:n][~observed] = 0.0
    points = jnp.asarray(padded)
    if is_cholesky(covariance):
        mask = jnp.asarray(np.arange(size) < n)
    else:  # per coordinate: a missing one does not count (padding rows: none counts)
        coords = np.zeros((size, dim), bool)
        coords[:n] = observed
        mask = jnp.asarray(coords)
    priors_z = Priors(*(jnp.asarray(v, dtype=jnp.float32) for v in std.priors(priors)))
    offset = std.loss_offset(n, config.n_components, covariance, observed.sum(axis=0))

    init_key, svi_key = jax.random.split(key)
    # A model of another K or D (the trainer never passes one) cannot start this fit.
    use_warm = warm_start is not None and warm_start.locs.shape == (config.n_components, dim)
    warm_z = (
        std.params_from_data(warm_start)
        if warm_start is not None and use_warm
        else _placeholder(config.n_components, dim)
    )
    try:
        warm = serving_to_sites(warm_z, covariance, config.reg_covar)
    except (np.linalg.LinAlgError, ValueError):  # not a usable start: fit without it
        use_warm = False
        warm = serving_to_sites(
            _placeholder(config.n_components, dim), covariance, config.reg_covar
        )
    score_at, score_mask, score_n = points, mask, n
    if n > config.score_points:
        pick_key, init_key = jax.random.split(init_key)
        pick = np.asarray(jax.random.randint(pick_key, (config.score_points,), 0, n))
        score_n = config.score_points
        sample = np.zeros((padded_size(score_n), dim), np.float32)
        sample[:score_n] = padded[pick]
        sample_mask = np.zeros((len(sample), *mask.shape[1:]), bool)
        sample_mask[:score_n] = np.asarray(mask)[pick]
        score_at, score_mask = jnp.asarray(sample), jnp.asarray(sample_mask)
    # Ranks the starts; for a bigger window these losses are on the scoring sample only.
    values, losses0 = _run(
        config,
        dim,
        "candidates",
        init_key,
        score_at,
        np.int32(score_n),
        priors_z,
        score_mask,
        warm,
        np.bool_(use_warm),
    )
    losses0 = np.asarray(losses0)
    order = np.argsort(losses0, kind="stable")
    warm_wins = use_warm and order[0] == 0 and not explore
    chosen = order[:1] if warm_wins else order[: config.n_best]
    lr0 = warm_step(config, n) if warm_wins else config.learning_rate
    em = warm_wins and config.warm_em
    n_observed = observed.sum(axis=0).astype(np.float32)  # per coordinate, for EM's counts
    states = _run(
        config,
        dim,
        "init_states",
        svi_key,
        values,
        jnp.asarray(chosen),
        np.float32(lr0),
        np.bool_(em),
        np.float32(n),
        n_observed,
        points,
        priors_z,
        mask,
    )

    loss_chunks: list[np.ndarray] = []
    norm_chunks: list[dict[str, np.ndarray]] = []
    converged, steps, prev = False, 0, None
    chunk = config.warm_chunk_steps if warm_wins else config.chunk_steps
    min_steps = config.warm_min_steps if warm_wins else config.min_steps
    if em:
        chunk, min_steps = config.em_chunk_steps, config.em_chunk_steps
    max_steps = config.em_max_steps if em else config.max_steps
    while steps < max_steps:
        states, (chunk_losses, chunk_norms) = _run(
            config, dim, "run_chunk", states, points, priors_z, mask, length=chunk
        )
        chunk_losses = np.asarray(chunk_losses, dtype=np.float64)  # (candidates, steps)
        loss_chunks.append(chunk_losses)
        norm_chunks.append({name: np.asarray(v) for name, v in chunk_norms.items()})
        steps += chunk
        mean = chunk_losses.mean(axis=1)
        if progress is not None:
            progress(steps, float(np.min(chunk_losses[:, -1])) + offset)
        finite = np.isfinite(mean)
        if not finite.any():
            break
        if em:
            # EM steps settle within a chunk: compare its last two steps' losses.
            if np.all(np.abs(np.diff(chunk_losses[:, -2:], axis=1)) <= config.warm_tol * n):
                converged = True
                break
        elif prev is not None and steps >= min_steps:
            change = np.abs(mean - prev) <= config.tol * np.maximum(1.0, np.abs(mean))
            if warm_wins:
                change |= np.abs(mean - prev) <= config.warm_tol * n
            # Candidates that went non-finite or are hopelessly behind are out of the running;
            # the rest must settle.
            best = np.min(np.where(finite, mean, np.inf))
            behind = mean - best > config.prune_chunks * np.maximum(prev - mean, 0.0)
            if np.all(change | ~finite | behind):
                converged = True
                break
        prev = mean

    losses = np.concatenate(loss_chunks, axis=1)
    final = np.where(np.isfinite(losses[:, -1]), losses[:, -1], np.inf)
    win = int(np.argmin(final))
    sites = {
        name: np.asarray(v)
        for name, v in _run(config, dim, "winner", states, np.int32(win)).items()
    }
    fitted_z = sites_to_serving(sites, covariance, config.reg_covar, config.n_components)
    params = std.params_to_data(fitted_z)
    if covariance != config.covariance:  # one-dimensional tied/full: scales as 1x1 factors
        params = params._replace(
            scale=np.broadcast_to(params.scale, params.locs.shape)[..., None].copy()
        )
    grad_norms = {
        name.removesuffix("_auto_loc"): np.concatenate([c[name][win] for c in norm_chunks])
        for name in norm_chunks[0]
    }
    return FitResult(
        params=params,
        priors=priors,
        init_loss=float(losses[win, 0]) + offset,  # a step's loss is at its starting point
        losses=losses[win] + offset,
        grad_norms=grad_norms,
        n_steps=steps,
        converged=converged,
        seconds=time.perf_counter() - t0,
        covariance=config.covariance,
        candidate_losses=tuple(float(v) + offset for v in final),
    )


def warm_step(config: FitConfig, n_points: int) -> float:
    """Adam's starting step size for a refit of n_points from a warm start that scored best."""
    return min(config.warm_learning_rate, config.warm_step_points / np.sqrt(n_points))


def _placeholder(k: int, d: int) -> MixtureParams:
    """Stands in for an absent warm start (same shapes, never chosen)."""
    return MixtureParams(np.full(k, 1.0 / k), np.zeros((k, d)), np.ones(d))


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
