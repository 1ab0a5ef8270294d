"""An EM step as a preconditioned gradient step, for cold fits and refits alike.

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

Why: Adam, whose step is one size for every parameter, needs many full-data passes to cover the
way to an optimum (hundreds from a cold start). The EM preconditioner scales each parameter's
step by its own curvature, so a fit settles in a few passes (EM's linear rate), each pass no
dearer than an Adam step (bench/results/fit.md: cold fits from k-means starts in 6-8 steps,
warm refits in 2-4).

AutoDelta keeps its parameters unconstrained (stick-breaking weights, log scales, the LKJ
factor's unconstrained vector), so the gradient is taken back to the constrained parameters
through each transform's Jacobian, the step is taken there, and the result is mapped back
through the exact inverse. The covariance step (and the locations' Sigma_k) is each type's
`em_step` (`mixture.covariance_forms`); this module takes the weights step and composes them.
A covariance step never shrinks the site's covariance by more than MAX_SHRINK (EM's covariance
minus the floor need not be positive definite); a step that still leaves the support
(non-finite values, a weight at or below zero) is not taken for that block: its parameters stay.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from mixture.covariance_forms import FORMS, MAX_SHRINK, MIN_COUNT, EmCounts

_simplex = biject_to(constraints.simplex)


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
    counts = jnp.maximum(n * weights, MIN_COUNT)  # (K,)
    counts_kd = jnp.maximum(weights[:, None] * n_obs, MIN_COUNT)  # (K, D), per coordinate
    scale_sites, mu_step, loc_counts = FORMS[covariance].em_step(
        params, grads, EmCounts(counts, counts_kd, n, n_obs), reg_covar
    )
    new.update(scale_sites)
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
    # it shrinks by at most MAX_SHRINK per step instead, and the others still move.
    pi_new = jnp.maximum(pi_new, pi / MAX_SHRINK)
    ok = jnp.all(jnp.isfinite(pi_new))
    pi_new = jnp.where(ok, pi_new / pi_new.sum(), pi)
    return jnp.where(ok, _simplex.inv(pi_new), u), pi_new
