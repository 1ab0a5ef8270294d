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
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer import SVI, TraceEnum_ELBO
from numpyro.infer.autoguide import AutoDelta

from mixture.model import GLOBAL_SITES, make_mixture_model
from mixture.params import (
    FitMetadata,
    MixtureParams,
    ModelParams,
    Priors,
    data_priors,
    seed_priors,
)

PriorsChoice = Literal["data", "seed"]


class DataError(ValueError):
    """Data that cannot be fit; the message says why in one line, `reason` as a short code."""

    def __init__(self, message: str, reason: str = "invalid_data") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Static settings of a fit (each distinct value compiles its own program)."""

    n_components: int = 2
    per_component_scale: bool = False
    priors: PriorsChoice = "data"
    n_init: int = 100
    learning_rate: float = 0.1
    #: Starting step size when the warm start wins: from near the optimum, Adam's first steps
    #: of size learning_rate would only kick the parameters away and back.
    warm_learning_rate: float = 0.01
    b1: float = 0.8
    b2: float = 0.99
    #: Adam's step size halves every this many steps (down to 1e-3 of the start): a fixed step
    #: keeps Adam circling the optimum at the step's own scale, so the loss never settles.
    lr_half_life_steps: int = 100
    #: Stop when the mean loss of a chunk changes by less than tol * max(1, |loss|).
    tol: float = 1e-6
    chunk_steps: int = 25
    min_steps: int = 50
    max_steps: int = 5000


class FitResult(NamedTuple):
    """A fitted mixture in data units, with the monitoring the tutorial plots."""

    params: MixtureParams  # numpy arrays
    priors: Priors
    init_loss: float  # best candidate's loss, data units
    losses: np.ndarray  # per step, data units
    grad_norms: dict[str, np.ndarray]  # per step, per global (unconstrained gradients)
    n_steps: int
    converged: bool
    seconds: float

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


class Standardizer(NamedTuple):
    """x = mean + std * z, per dimension."""

    mean: np.ndarray
    std: np.ndarray

    def points(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def priors(self, p: Priors) -> Priors:
        return Priors(
            p.concentration,
            (p.loc_center - self.mean) / self.std,
            p.loc_scale / self.std,
            p.scale_log_mean - np.log(self.std),
            p.scale_log_sd,
        )

    def params_to_data(self, m: MixtureParams) -> MixtureParams:
        return MixtureParams(
            np.asarray(m.weights, np.float64),
            self.mean + self.std * np.asarray(m.locs, np.float64),
            self.std * np.asarray(m.scale, np.float64),
        )

    def params_from_data(self, m: MixtureParams) -> MixtureParams:
        return MixtureParams(
            np.asarray(m.weights),
            (np.asarray(m.locs) - self.mean) / self.std,
            np.asarray(m.scale) / self.std,
        )

    def loss_offset(self, n_points: int, n_components: int, per_component_scale: bool) -> float:
        """log|Jacobian| of z -> x for every density in the joint (observations, locs, scale)."""
        n_scales = n_components if per_component_scale else 1
        return float((n_points + n_components + n_scales) * np.log(self.std).sum())


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
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise DataError(f"data has {bad} point(s) with NaN or inf", "not_finite")
    if n_components is not None and x.shape[0] < n_components:
        raise DataError(
            f"{x.shape[0]} point(s) cannot fit {n_components} components", "too_few_points"
        )
    if x.shape[0] < 2 or np.any(x.std(axis=0) == 0):
        dims = np.flatnonzero(x.std(axis=0) == 0).tolist() if x.shape[0] >= 2 else "all"
        raise DataError(
            f"data has zero variance (dimension(s) {dims}): nothing to separate", "zero_variance"
        )
    return x


class _Program(NamedTuple):
    svi: SVI
    candidate_losses: Callable[..., Any]
    init_state: Callable[..., Any]
    run_chunk: Callable[..., Any]


@functools.lru_cache(maxsize=16)
def _program(config: FitConfig, dim: int) -> _Program:
    """The jitted pieces of a fit, built once per static configuration and dimension."""
    k, per = config.n_components, config.per_component_scale
    model = make_mixture_model(k, per)
    # As in the tutorial: the guide sees only the globals; the seed handler feeds the local
    # sample sites the guide's prototype run passes through.
    global_model = handlers.block(
        handlers.seed(model, jax.random.PRNGKey(0)),
        hide_fn=lambda site: site.get("name") not in (*GLOBAL_SITES, "components"),
    )
    guide = AutoDelta(global_model)
    elbo = TraceEnum_ELBO()
    schedule = optax.exponential_decay(
        config.learning_rate,
        transition_steps=config.lr_half_life_steps,
        decay_rate=0.5,
        end_value=config.learning_rate * 1e-3,
    )
    optim = optax.chain(_record_grad_norms(), optax.adam(schedule, config.b1, config.b2))
    svi = SVI(model, guide, optim, loss=elbo)

    # Set the guide's prototype up once, outside any jit, on dummy data of the right shape.
    dummy_priors = seed_priors(dim)
    svi.init(jax.random.PRNGKey(0), jnp.zeros((k, dim)), dummy_priors)

    def guide_values(m: MixtureParams) -> dict[str, Any]:
        return {f"{name}_auto_loc": getattr(m, name) for name in GLOBAL_SITES}

    @jax.jit
    def candidate_losses(candidates: MixtureParams, points: Any, priors: Priors, mask: Any) -> Any:
        def one(m: MixtureParams) -> Any:
            return elbo.loss(
                jax.random.PRNGKey(0), guide_values(m), model, guide, points, priors, mask
            )

        return jax.vmap(one)(candidates)

    @jax.jit
    def init_state(key: Any, start: MixtureParams, points: Any, priors: Priors, mask: Any) -> Any:
        return svi.init(key, points, priors, mask, init_params=guide_values(start))

    @jax.jit
    def run_chunk(state: Any, points: Any, priors: Priors, mask: Any) -> Any:
        def step(s: Any, _: Any) -> Any:
            s, loss = svi.update(s, points, priors, mask)
            # numpyro's optax wrapper keeps (step, (params, chain_state)).
            return s, (loss, s.optim_state[1][1][0].norms)

        return jax.lax.scan(step, state, None, length=config.chunk_steps)

    return _Program(svi, candidate_losses, init_state, run_chunk)


class _NormsState(NamedTuple):
    norms: dict[str, Any]


def _record_grad_norms() -> optax.GradientTransformation:
    """An identity transformation that keeps each parameter's gradient norm in its state."""

    def init(params: Any) -> _NormsState:
        return _NormsState({name: jnp.zeros(()) for name in params})

    def update(grads: Any, state: _NormsState, params: Any = None) -> Any:
        return grads, _NormsState({name: jnp.linalg.norm(g) for name, g in grads.items()})

    return optax.GradientTransformation(init, update)


def initial_candidates(
    key: Any, points_z: Any, n_candidates: int, n_components: int, per_component_scale: bool
) -> MixtureParams:
    """The tutorial's initialisation, n_candidates at once: uniform weights, scale sqrt(var/2),
    locs drawn (with replacement) from the data."""
    n, d = points_z.shape
    idx = jax.random.randint(key, (n_candidates, n_components), 0, n)
    locs = points_z[idx]
    weights = jnp.full((n_candidates, n_components), 1.0 / n_components)
    scale = jnp.sqrt(points_z.var(axis=0) / 2)
    shape = (n_candidates, n_components, d) if per_component_scale else (n_candidates, d)
    return MixtureParams(weights, locs, jnp.broadcast_to(scale, shape))


def fit_map(
    data: Any,
    key: Any,
    config: FitConfig = FitConfig(),
    *,
    warm_start: MixtureParams | None = None,
    priors: Priors | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Fits the MAP globals to data ((N,) or (N, D)), from the best of config.n_init candidates.

    key: a jax.random key (passed explicitly; the fit is deterministic given it).
    warm_start: a current model (data units) to take one candidate's place, for refits; if it
        wins, the fit starts from config.warm_learning_rate.
    priors: explicit priors; by default config.priors chooses the seed's or data-relative ones.
    progress: called as progress(step, loss) after each chunk, for terminals and logs.
    """
    t0 = time.perf_counter()
    x = as_points(data, config.n_components)
    n, dim = x.shape
    if priors is None:
        priors = seed_priors(dim) if config.priors == "seed" else data_priors(x)
    std = Standardizer(x.mean(axis=0), x.std(axis=0))
    points = jnp.asarray(std.points(x), dtype=jnp.float32)
    priors_z = Priors(*(jnp.asarray(v, dtype=jnp.float32) for v in std.priors(priors)))
    mask = jnp.ones(n, dtype=bool)
    offset = std.loss_offset(n, config.n_components, config.per_component_scale)
    prog = _program(config, dim)

    init_key, svi_key = jax.random.split(key)
    candidates = initial_candidates(
        init_key, points, config.n_init, config.n_components, config.per_component_scale
    )
    if warm_start is not None:
        # In slot 0, so the candidates keep their shape and the program is reused.
        warm = std.params_from_data(warm_start)
        candidates = jax.tree.map(
            lambda c, w: c.at[0].set(jnp.asarray(w, c.dtype)), candidates, warm
        )
    losses0 = np.asarray(prog.candidate_losses(candidates, points, priors_z, mask))
    losses0 = np.where(np.isfinite(losses0), losses0, np.inf)
    best = int(np.argmin(losses0))
    start = jax.tree.map(lambda c: c[best], candidates)
    if warm_start is not None and best == 0:
        prog = _program(dataclasses.replace(config, learning_rate=config.warm_learning_rate), dim)

    state = prog.init_state(svi_key, start, points, priors_z, mask)
    loss_chunks: list[np.ndarray] = []
    norm_chunks: list[dict[str, np.ndarray]] = []
    converged, steps, prev = False, 0, None
    while steps < config.max_steps:
        state, (chunk_losses, chunk_norms) = prog.run_chunk(state, points, priors_z, mask)
        chunk_losses = np.asarray(chunk_losses, dtype=np.float64)
        loss_chunks.append(chunk_losses)
        norm_chunks.append({k: np.asarray(v) for k, v in chunk_norms.items()})
        steps += config.chunk_steps
        mean = float(chunk_losses.mean())
        if progress is not None:
            progress(steps, float(chunk_losses[-1]) + offset)
        if not np.isfinite(mean):
            break
        settled = prev is not None and abs(mean - prev) <= config.tol * max(1.0, abs(mean))
        if settled and steps >= config.min_steps:
            converged = True
            break
        prev = mean

    fitted = prog.svi.get_params(state)
    fitted_z = MixtureParams(
        **{name: np.asarray(fitted[f"{name}_auto_loc"]) for name in MixtureParams._fields}
    )
    grad_norms = {
        name.removesuffix("_auto_loc"): np.concatenate([c[name] for c in norm_chunks])
        for name in norm_chunks[0]
    }
    return FitResult(
        params=std.params_to_data(fitted_z),
        priors=priors,
        init_loss=float(losses0[best]) + offset,
        losses=np.concatenate(loss_chunks) + offset,
        grad_norms=grad_norms,
        n_steps=steps,
        converged=converged,
        seconds=time.perf_counter() - t0,
    )


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
    return ModelParams(version, result.params, meta)
