"""What differs by covariance type, as small pure functions per type, chosen by one table.

Each covariance type (`mixture.covariance`) has a `CovarianceForm`: its initial candidates for
the fit, its log-density per component (jnp for the jitted serving programs, numpy float64 for
evaluation), its marginal over observed coordinates (missing values), and its EM step. `FORMS`
maps every type to its form; callers look the form up once and call it, so the choice between
types is made in one place (as scikit-learn's `covariance_type` dispatch is) rather than by
if-chains repeated in the fit, the classifier and the evaluator.

Shapes: K components, D dimensions, B (or N) points, C candidates. `scale` is the serving form:
(D,) for tied-diag, (K, D) for diag and spherical, (K, D, D) lower Cholesky factors for tied and
full. So the diagonal types share their densities, as the Cholesky types share theirs; the
fit's site values (initial candidates, EM steps) differ for all five.

Imports no NumPyro: the EM steps, which run only while the fit's programs are traced, import
its transforms when first called (a process that loads the fit's programs from the program
cache then never imports NumPyro).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import solve_triangular

from mixture.covariance import infer_covariance

#: Smallest count a component's EM step is scaled by: a component with (nearly) no weight would
#: otherwise take an unbounded step.
MIN_COUNT = 1.0
#: An EM step's site covariance keeps at least 1/MAX_SHRINK of the current one's smallest
#: eigenvalue (and a weight at least 1/MAX_SHRINK of its current value): EM's covariance minus
#: the floor is not positive definite when a component sits on repeated values.
MAX_SHRINK = 100.0


class EmCounts(NamedTuple):
    """The expected counts an EM step divides by (`mixture.precondition.em_update`)."""

    per_component: Any  # (K,) N_k, at least MIN_COUNT
    per_coordinate: Any  # (K, D) N_k of the points observing each coordinate, at least MIN_COUNT
    points: Any  # N, the points the loss sums over
    observed: Any  # (D,) how many of them observe each coordinate


class CovarianceForm(NamedTuple):
    """The pure functions of one covariance type (see the module's shapes)."""

    #: initial_scale(C, K, D, dtype) -> the scale sites' values (`mixture.sites.global_sites`
    #: less weights and locs) of C candidates at the tutorial's start: scale sqrt(var / 2) in
    #: standardised units (var 1), identity correlations.
    initial_scale: Callable[[int, int, int, Any], dict[str, Any]]
    #: log_density(residuals (K, B, D), scale) -> log N(x; loc_k, cov_k), (K, B); jnp.
    log_density: Callable[[Any, Any], Any]
    #: marginal_log_density(residuals (K, B, D), observed (B, D) bool, scale) -> (K, B): the
    #: density of each record's observed coordinates only; jnp.
    marginal_log_density: Callable[[Any, Any, Any], Any]
    #: log_density_np(diff (N, K, D), scale) -> (N, K): `log_density` in numpy float64.
    log_density_np: Callable[[np.ndarray, np.ndarray], np.ndarray]
    #: em_step(params, grads, counts, reg_covar) -> (new unconstrained scale sites, location
    #: step (K, D), its counts (K, 1) or (K, D)): the covariance part of
    #: `mixture.precondition.em_update`, on AutoDelta's `<site>_auto_loc` values and the loss's
    #: gradients there.
    em_step: Callable[[dict[str, Any], dict[str, Any], EmCounts, float], tuple[Any, Any, Any]]


def form_of_scale(scale: Any) -> CovarianceForm:
    """The form that serves a serving-form scale (its layout, from its number of axes: the
    density of each layout is the same for every type that serves in it)."""
    return FORMS[infer_covariance(scale)]


# Initial candidates.


def _half_scales(c: int, per: tuple[int, ...], d: int, dtype: Any) -> Any:
    """(C, *per, D) scales sqrt(0.5)."""
    return jnp.broadcast_to(jnp.full((d,), jnp.sqrt(0.5), dtype), (c, *per, d))


def _identity_corr(c: int, per: tuple[int, ...], d: int, dtype: Any) -> Any:
    """(C, *per, D, D) identity correlation factors."""
    return jnp.broadcast_to(jnp.eye(d, dtype=dtype), (c, *per, d, d))


def _tied_diag_start(c: int, k: int, d: int, dtype: Any) -> dict[str, Any]:
    return {"scale": _half_scales(c, (), d, dtype)}


def _diag_start(c: int, k: int, d: int, dtype: Any) -> dict[str, Any]:
    return {"scale": _half_scales(c, (k,), d, dtype)}


def _spherical_start(c: int, k: int, d: int, dtype: Any) -> dict[str, Any]:
    return {"scale": jnp.full((c, k), jnp.sqrt(0.5), dtype)}


def _tied_start(c: int, k: int, d: int, dtype: Any) -> dict[str, Any]:
    return {"scales": _half_scales(c, (), d, dtype), "corr": _identity_corr(c, (), d, dtype)}


def _full_start(c: int, k: int, d: int, dtype: Any) -> dict[str, Any]:
    return {"scales": _half_scales(c, (k,), d, dtype), "corr": _identity_corr(c, (k,), d, dtype)}


# Densities: diagonal scales, (D,) or (K, D).


def _diagonal_log_density(residuals: Any, scale: Any) -> Any:
    d = residuals.shape[-1]
    per = scale if scale.ndim == 2 else scale[None, :]  # (K or 1, D)
    z = residuals / per[:, None, :]
    log_det = jnp.log(per).sum(-1)
    return -log_det[:, None] - 0.5 * (z * z).sum(-1) - 0.5 * d * jnp.log(2 * jnp.pi)


def _diagonal_marginal(residuals: Any, observed: Any, scale: Any) -> Any:
    # A missing coordinate gets residual 0 and unit variance, which adds nothing to the density.
    k, _, d = residuals.shape
    r = jnp.where(observed[None], residuals, 0.0)
    per = jnp.broadcast_to(scale, (k, d))
    per = jnp.where(observed[None], per[:, None, :], 1.0)  # (K, B, D)
    z = r / per
    log_det = jnp.log(per).sum(-1)
    n_observed = observed.sum(-1)  # (B,)
    return -log_det - 0.5 * (z * z).sum(-1) - 0.5 * n_observed[None] * jnp.log(2 * jnp.pi)


def _diagonal_log_density_np(diff: np.ndarray, scale: np.ndarray) -> np.ndarray:
    _, k, d = diff.shape
    scale = np.broadcast_to(scale, (k, d))
    z = diff / scale[None]
    log_det = np.log(scale).sum(-1)
    return -0.5 * (z**2).sum(-1) - log_det[None] - 0.5 * d * np.log(2 * np.pi)


# Densities: lower Cholesky factors, (K, D, D).


def _cholesky_log_density(residuals: Any, scale: Any) -> Any:
    d = residuals.shape[-1]
    # z = L^-1 (x - loc), by the inverse of each (small) factor.
    eye = jnp.broadcast_to(jnp.eye(d, dtype=scale.dtype), scale.shape)
    inv = jax.scipy.linalg.solve_triangular(scale, eye, lower=True)  # (K, D, D)
    z = jnp.einsum("kij,kbj->kbi", inv, residuals)
    log_det = jnp.log(jnp.diagonal(scale, axis1=-2, axis2=-1)).sum(-1)
    return -log_det[:, None] - 0.5 * (z * z).sum(-1) - 0.5 * d * jnp.log(2 * jnp.pi)


def _cholesky_marginal(residuals: Any, observed: Any, scale: Any) -> Any:
    # The factor F of M S M + (I - M) (M: the observed coordinates) from a QR of
    # [M L, I - M]^T, never forming S = L L^T in float32 (that would square L's condition).
    d = residuals.shape[-1]
    r = jnp.where(observed[None], residuals, 0.0)
    m = observed.astype(scale.dtype)  # (B, D)
    rows = m[None, :, :, None] * scale[:, None]  # (K, B, D, D)
    pad = jnp.broadcast_to(jnp.eye(d, dtype=m.dtype) * (1.0 - m)[:, :, None], rows.shape)
    qr = jnp.linalg.qr(jnp.swapaxes(jnp.concatenate([rows, pad], -1), -1, -2), mode="r")
    sign = jnp.sign(jnp.diagonal(qr, axis1=-2, axis2=-1))
    factor = jnp.swapaxes(qr, -1, -2) * jnp.where(sign == 0, 1.0, sign)[..., None, :]
    z = jax.scipy.linalg.solve_triangular(factor, r[..., None], lower=True)[..., 0]
    log_det = jnp.log(jnp.diagonal(factor, axis1=-2, axis2=-1)).sum(-1)
    n_observed = observed.sum(-1)  # (B,)
    return -log_det - 0.5 * (z * z).sum(-1) - 0.5 * n_observed[None] * jnp.log(2 * jnp.pi)


def _cholesky_log_density_np(diff: np.ndarray, scale: np.ndarray) -> np.ndarray:
    _, k, d = diff.shape
    z = np.stack([solve_triangular(scale[j], diff[:, j].T, lower=True).T for j in range(k)], axis=1)
    log_det = np.log(np.diagonal(scale, axis1=-2, axis2=-1)).sum(-1)  # (K,)
    return -0.5 * (z**2).sum(-1) - log_det[None] - 0.5 * d * np.log(2 * np.pi)


# EM steps (Xu and Jordan's preconditioned step; see mixture.precondition). Diagonal types:
# the site `scale` is log(scale) unconstrained, the model's variance scale^2 + reg_covar.


def _diagonal_em_step(
    count: Callable[[EmCounts], Any],
    per_dim: Callable[[Any], Any],
    params: dict[str, Any],
    grads: dict[str, Any],
    counts: EmCounts,
    reg_covar: float,
) -> tuple[dict[str, Any], Any, Any]:
    """count(counts): the variance step's expected counts; per_dim(var): the variance per
    component and dimension, (K, D) or (D,)."""
    log_scale, g = params["scale_auto_loc"], grads["scale_auto_loc"]
    var = jnp.exp(2 * log_scale) + reg_covar  # the model's variance, floor included
    # dloss/dvar from dloss/dlog(scale): dvar_site/dlog(scale) = 2 * scale^2.
    g_var = g / (2 * jnp.exp(2 * log_scale))
    per = count(counts)
    var_new = var - 2 * var**2 * g_var / per
    # EM's variance can fall below the floor (a component on repeated values): the site's
    # own variance then shrinks by at most MAX_SHRINK per step, towards the floor.
    site_old = jnp.exp(2 * log_scale)
    site_var = jnp.maximum(var_new - reg_covar, site_old / MAX_SHRINK)
    ok = jnp.isfinite(var_new) & (var_new > 0)
    new = jnp.where(ok, 0.5 * jnp.log(jnp.where(ok, site_var, 1.0)), log_scale)
    mu_step = per_dim(var) * grads["locs_auto_loc"]
    return {"scale_auto_loc": new}, mu_step, counts.per_coordinate


def _tied_diag_count(counts: EmCounts) -> Any:  # (D,): every point, per coordinate
    return jnp.maximum(counts.observed, MIN_COUNT)


def _diag_count(counts: EmCounts) -> Any:  # (K, D)
    return counts.per_coordinate


def _spherical_count(counts: EmCounts) -> Any:  # (K,): summed over dimensions
    return counts.per_coordinate.sum(axis=1)


def _same(var: Any) -> Any:
    return var


def _spherical_per_dim(var: Any) -> Any:  # (K,) -> (K, 1)
    return var[:, None]


@functools.cache
def _corr() -> Any:
    """The LKJ factor's bijection (unconstrained vector <-> correlation Cholesky factor)."""
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import biject_to

    return biject_to(constraints.corr_cholesky)


def _covariance(log_s: Any, u_corr: Any) -> Any:
    factor = jnp.exp(log_s)[:, None] * _corr()(u_corr)
    return factor @ factor.T


def _full_step(
    log_s: Any, u_corr: Any, g_s: Any, g_corr: Any, count: Any, reg_covar: float
) -> tuple[Any, Any, Any]:
    """EM's covariance step for one (D, D) covariance = diag(exp(log_s)) C C^T diag(exp(log_s));
    returns the model's current covariance (floor included) and the new unconstrained values."""
    d = log_s.shape[0]
    rows, cols = jnp.tril_indices(d)
    u = jnp.concatenate([log_s, u_corr])

    def vech(u: Any) -> Any:
        return _covariance(u[:d], u[d:])[rows, cols]

    jac = jax.jacfwd(vech)(u)  # square: (log scales, LKJ vector) <-> covariance is a bijection
    g_vech = jnp.linalg.solve(jac.T, jnp.concatenate([g_s, g_corr]))
    # The symmetric-matrix gradient: an off-diagonal entry of vech moves two matrix entries.
    g_mat = jnp.zeros((d, d), g_vech.dtype).at[rows, cols].set(g_vech)
    g_mat = (g_mat + g_mat.T) / 2
    sigma = _covariance(log_s, u_corr) + reg_covar * jnp.eye(d)
    site_old = sigma - reg_covar * jnp.eye(d)
    site_new = sigma - 2 * sigma @ g_mat @ sigma / count - reg_covar * jnp.eye(d)
    site_new = (site_new + site_new.T) / 2
    low = jnp.linalg.eigvalsh(site_old)[0] / MAX_SHRINK
    eig, vec = jnp.linalg.eigh(site_new)
    clipped = (vec * jnp.maximum(eig, low)) @ vec.T
    site_new = jnp.where(eig[0] < low, (clipped + clipped.T) / 2, site_new)
    s_new = jnp.sqrt(jnp.diagonal(site_new))
    corr_new = jnp.linalg.cholesky(site_new / (s_new[:, None] * s_new[None, :]))
    u_corr_new = _corr().inv(corr_new)
    ok = jnp.all(jnp.isfinite(u_corr_new)) & jnp.all(jnp.isfinite(jnp.log(s_new)))
    return (
        sigma,
        jnp.where(ok, jnp.log(s_new), log_s),
        jnp.where(ok, u_corr_new, u_corr),
    )


def _cholesky_em_step(
    covariance_step: Callable[..., tuple[Any, Any, Any]],
    params: dict[str, Any],
    grads: dict[str, Any],
    counts: EmCounts,
    reg_covar: float,
) -> tuple[dict[str, Any], Any, Any]:
    """covariance_step(log_s, u_corr, g_s, g_corr, counts, reg_covar) -> (the (K, D, D)
    covariances, floor included; the new log scales and LKJ vectors)."""
    log_s, u_corr = params["scales_auto_loc"], params["corr_auto_loc"]
    g_s, g_corr = grads["scales_auto_loc"], grads["corr_auto_loc"]
    sigma, log_s_new, u_corr_new = covariance_step(log_s, u_corr, g_s, g_corr, counts, reg_covar)
    new = {"scales_auto_loc": log_s_new, "corr_auto_loc": u_corr_new}
    mu_step = jnp.einsum("kij,kj->ki", sigma, grads["locs_auto_loc"])
    return new, mu_step, counts.per_component[:, None]


def _tied_covariance_step(
    log_s: Any, u_corr: Any, g_s: Any, g_corr: Any, counts: EmCounts, reg_covar: float
) -> tuple[Any, Any, Any]:
    """One covariance (D,), (D(D-1)/2,) for every component: N_k is N."""
    sigma, log_s_new, u_corr_new = _full_step(log_s, u_corr, g_s, g_corr, counts.points, reg_covar)
    sigma = jnp.broadcast_to(sigma, (counts.per_component.shape[0], *sigma.shape))
    return sigma, log_s_new, u_corr_new


def _per_component_covariance_step(
    log_s: Any, u_corr: Any, g_s: Any, g_corr: Any, counts: EmCounts, reg_covar: float
) -> tuple[Any, Any, Any]:
    """A covariance per component, (K, D) and (K, D(D-1)/2,), each with its own N_k."""
    step = jax.vmap(lambda a, b, c, d, m: _full_step(a, b, c, d, m, reg_covar))
    return step(log_s, u_corr, g_s, g_corr, counts.per_component)


#: Every covariance type's form, keyed as `mixture.covariance.COVARIANCES` names them.
FORMS: dict[str, CovarianceForm] = {
    "tied-diag": CovarianceForm(
        _tied_diag_start,
        _diagonal_log_density,
        _diagonal_marginal,
        _diagonal_log_density_np,
        functools.partial(_diagonal_em_step, _tied_diag_count, _same),
    ),
    "diag": CovarianceForm(
        _diag_start,
        _diagonal_log_density,
        _diagonal_marginal,
        _diagonal_log_density_np,
        functools.partial(_diagonal_em_step, _diag_count, _same),
    ),
    "spherical": CovarianceForm(
        _spherical_start,
        _diagonal_log_density,
        _diagonal_marginal,
        _diagonal_log_density_np,
        functools.partial(_diagonal_em_step, _spherical_count, _spherical_per_dim),
    ),
    "tied": CovarianceForm(
        _tied_start,
        _cholesky_log_density,
        _cholesky_marginal,
        _cholesky_log_density_np,
        functools.partial(_cholesky_em_step, _tied_covariance_step),
    ),
    "full": CovarianceForm(
        _full_start,
        _cholesky_log_density,
        _cholesky_marginal,
        _cholesky_log_density_np,
        functools.partial(_cholesky_em_step, _per_component_covariance_step),
    ),
}
