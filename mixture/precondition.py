"""An EM step as a preconditioned gradient step, for refits from a warm start.

For a Gaussian mixture, Xu and Jordan (1996, "On convergence properties of the EM algorithm for
Gaussian mixtures") show that one EM iteration is exactly a gradient step on the log-likelihood
L with a parameter-dependent preconditioner:

    weights   pi  <- pi  + (diag(pi) - pi pi^T) dL/dpi / N
    locations mu_k <- mu_k + Sigma_k dL/dmu_k / N_k
    covariance Sigma_k <- Sigma_k + 2 Sigma_k (dL/dSigma_k) Sigma_k / N_k

(N_k the component's expected count sum_i r_ik; for a tied covariance N_k is N). `em_update`
applies that step to the gradient SVI computes of TraceEnum_ELBO's loss (which marginalises the
assignments exactly, so its gradient is the MAP objective's), with N_k taken as N * pi_k of the
updated weights: the weights step is EM's pi_k = N_k / N exactly, so that is sum_i r_ik (up to
the prior's pseudo-counts). The covariance step is centred on the current locations (Xu and
Jordan's form), not EM's updated ones; the fixed points are the same. The priors' terms
ride along in the gradient, so the step's fixed points are exactly the MAP optima Adam looks for;
only the path there changes.

Why: from a warm start the new window's optimum is close, and Adam, whose step is one size for
every parameter, needs 20-30 full-data passes to cover it at 1M points. The EM preconditioner
scales each parameter's step by its own curvature, so a refit settles in a few passes (EM's
linear rate), each pass no dearer than an Adam step.

AutoDelta keeps its parameters unconstrained (stick-breaking weights, log scales, the LKJ
factor's unconstrained vector), so the gradient is taken back to the constrained parameters
through each transform's Jacobian, the step is taken there, and the result is mapped back
through the exact inverse. A covariance step never shrinks the site's covariance by more than
_MAX_SHRINK (EM's covariance minus the floor need not be positive definite); a step that still
leaves the support (non-finite values, a weight at or below zero) is not taken for that block:
its parameters stay.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

_simplex = biject_to(constraints.simplex)
_corr = biject_to(constraints.corr_cholesky)
#: Smallest count a component's step is scaled by: a component with (nearly) no weight would
#: otherwise take an unbounded step.
_MIN_COUNT = 1.0
#: A step's site covariance keeps at least 1/_MAX_SHRINK of the current one's smallest
#: eigenvalue: EM's covariance minus the floor is not positive definite when a component sits
#: on repeated values.
_MAX_SHRINK = 100.0


def em_update(
    params: dict[str, Any],
    grads: dict[str, Any],
    covariance: str,
    n_components: int,
    reg_covar: float,
    n_points: Any,
    n_observed: Any = None,
) -> dict[str, Any]:
    """The unconstrained AutoDelta parameters after one EM-preconditioned step.

    params, grads: `<site>_auto_loc` -> unconstrained value and the loss's gradient there.
    n_points: the number of points the loss sums over (padding excluded).
    n_observed: (D,) how many of them observe each coordinate (missing values, diagonal types:
        a coordinate's location and variance steps are scaled by its own expected count,
        pi_k * n_observed[d], as EM's are); None: every point observes every coordinate.
    """
    k = n_components
    d = params["locs_auto_loc"].shape[-1]
    n = jnp.maximum(jnp.asarray(n_points, jnp.float32), 1.0)
    n_obs = n * jnp.ones(d) if n_observed is None else jnp.asarray(n_observed, jnp.float32)
    new = dict(params)
    if k > 1:
        new["weights_auto_loc"], weights = _weights_step(
            params["weights_auto_loc"], grads["weights_auto_loc"], n
        )
    else:
        weights = jnp.ones((1,))
    # After the exact weights step, n * weights is each component's expected count under the
    # current parameters (sum_i r_ik, up to the prior's pseudo-counts): the N_k of the steps below.
    counts = jnp.maximum(n * weights, _MIN_COUNT)  # (K,)
    counts_kd = jnp.maximum(weights[:, None] * n_obs, _MIN_COUNT)  # (K, D), per coordinate
    tied = covariance in ("tied-diag", "tied")

    if covariance in ("full", "tied"):
        log_s, u_corr = params["scales_auto_loc"], params["corr_auto_loc"]
        g_s, g_corr = grads["scales_auto_loc"], grads["corr_auto_loc"]
        if tied:
            sigma, log_s_new, u_corr_new = _full_step(log_s, u_corr, g_s, g_corr, n, reg_covar)
            sigma = jnp.broadcast_to(sigma, (k, *sigma.shape))
        else:
            step = jax.vmap(lambda a, b, c, d, m: _full_step(a, b, c, d, m, reg_covar))
            sigma, log_s_new, u_corr_new = step(log_s, u_corr, g_s, g_corr, counts)
        new["scales_auto_loc"], new["corr_auto_loc"] = log_s_new, u_corr_new
        mu_step = jnp.einsum("kij,kj->ki", sigma, grads["locs_auto_loc"])
        loc_counts = counts[:, None]
    else:
        log_scale, g = params["scale_auto_loc"], grads["scale_auto_loc"]
        var = jnp.exp(2 * log_scale) + reg_covar  # the model's variance, floor included
        # dloss/dvar from dloss/dlog(scale): dvar_site/dlog(scale) = 2 * scale^2.
        g_var = g / (2 * jnp.exp(2 * log_scale))
        if covariance == "spherical":
            var_new = var - 2 * var**2 * g_var / counts_kd.sum(axis=1)
        else:
            per = jnp.maximum(n_obs, _MIN_COUNT) if tied else counts_kd
            var_new = var - 2 * var**2 * g_var / per
        # EM's variance can fall below the floor (a component on repeated values): the site's
        # own variance then shrinks by at most _MAX_SHRINK per step, towards the floor.
        site_old = jnp.exp(2 * log_scale)
        site_var = jnp.maximum(var_new - reg_covar, site_old / _MAX_SHRINK)
        ok = jnp.isfinite(var_new) & (var_new > 0)
        new["scale_auto_loc"] = jnp.where(
            ok, 0.5 * jnp.log(jnp.where(ok, site_var, 1.0)), log_scale
        )
        var_k = var[:, None] if covariance == "spherical" else var
        mu_step = var_k * grads["locs_auto_loc"]
        loc_counts = counts_kd
    locs = params["locs_auto_loc"] - mu_step / loc_counts
    new["locs_auto_loc"] = jnp.where(jnp.isfinite(locs), locs, params["locs_auto_loc"])
    return new


def _weights_step(u: Any, g_u: Any, n: Any) -> tuple[Any, Any]:
    """EM's weights step in stick-breaking coordinates; returns (new u, new weights)."""
    pi = _simplex(u)
    jac = jax.jacfwd(_simplex)(u)  # (K, K-1)
    # A gradient on the simplex is defined up to a multiple of ones; the projector below
    # annihilates that multiple, so the minimum-norm solution of jac^T g = g_u serves. A weight
    # near zero saturates its stick-breaking coordinate in float32 (its column of jac is 0):
    # the pseudo-inverse leaves that one weight where it is and still moves the others, where
    # solving the singular normal equations gave NaN and froze every weight.
    g_pi = jnp.linalg.pinv(jac.T) @ g_u
    pi_new = pi - (pi * g_pi - pi * jnp.dot(pi, g_pi)) / n
    # The prior's pseudo-counts can take a nearly empty component's weight to or below zero:
    # it shrinks by at most _MAX_SHRINK per step instead, and the others still move.
    pi_new = jnp.maximum(pi_new, pi / _MAX_SHRINK)
    ok = jnp.all(jnp.isfinite(pi_new))
    pi_new = jnp.where(ok, pi_new / pi_new.sum(), pi)
    return jnp.where(ok, _simplex.inv(pi_new), u), pi_new


def _covariance(log_s: Any, u_corr: Any) -> Any:
    factor = jnp.exp(log_s)[:, None] * _corr(u_corr)
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
    low = jnp.linalg.eigvalsh(site_old)[0] / _MAX_SHRINK
    eig, vec = jnp.linalg.eigh(site_new)
    clipped = (vec * jnp.maximum(eig, low)) @ vec.T
    site_new = jnp.where(eig[0] < low, (clipped + clipped.T) / 2, site_new)
    s_new = jnp.sqrt(jnp.diagonal(site_new))
    corr_new = jnp.linalg.cholesky(site_new / (s_new[:, None] * s_new[None, :]))
    u_corr_new = _corr.inv(corr_new)
    ok = jnp.all(jnp.isfinite(u_corr_new)) & jnp.all(jnp.isfinite(jnp.log(s_new)))
    return (
        sigma,
        jnp.where(ok, jnp.log(s_new), log_s),
        jnp.where(ok, u_corr_new, u_corr),
    )
