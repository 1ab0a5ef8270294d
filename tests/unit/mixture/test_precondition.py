"""The EM-preconditioned step (mixture.precondition) against EM's closed form, and warm refits
that take it against refits that take Adam's steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp
from numpy.testing import assert_allclose
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from mixture.fit import FitConfig, fit_map
from mixture.params import MixtureParams
from mixture.precondition import em_update

pytestmark = pytest.mark.unit

COVARIANCES = ("tied-diag", "diag", "spherical", "tied", "full")
_simplex = biject_to(constraints.simplex)
_corr = biject_to(constraints.corr_cholesky)
K, D, N = 3, 3, 600


def _covariances(params: dict, covariance: str, reg: float) -> jnp.ndarray:
    """The (K, D, D) covariances the unconstrained AutoDelta values stand for (floor included)."""
    if covariance in ("full", "tied"):
        s = jnp.exp(params["scales_auto_loc"])
        factor = s[..., :, None] * _corr(params["corr_auto_loc"])
        cov = factor @ jnp.swapaxes(factor, -1, -2) + reg * jnp.eye(D)
        return jnp.broadcast_to(cov, (K, D, D))
    var = jnp.exp(2 * params["scale_auto_loc"]) + reg
    var = var[:, None] * jnp.ones(D) if covariance == "spherical" else var
    return jnp.broadcast_to(var, (K, D))[..., None] * jnp.eye(D)


def _loss(params: dict, x: jnp.ndarray, covariance: str, reg: float) -> jnp.ndarray:
    """Minus the log-likelihood (no priors): the objective EM's closed form maximises."""
    pi = _simplex(params["weights_auto_loc"])
    cov = _covariances(params, covariance, reg)
    diff = x[:, None, :] - params["locs_auto_loc"][None]
    chol = jnp.linalg.cholesky(cov)
    z = jax.vmap(lambda c, d: jax.scipy.linalg.solve_triangular(c, d.T, lower=True).T, (0, 1))(
        chol, diff
    )  # (K, N, D)
    logdet = 2 * jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    logp = -0.5 * (z**2).sum(-1) - 0.5 * logdet[:, None] - 0.5 * D * jnp.log(2 * jnp.pi)
    return -logsumexp(jnp.log(pi)[:, None] + logp, axis=0).sum()


def _em_reference(params: dict, x: np.ndarray, covariance: str, reg: float) -> tuple:
    """EM's weights and locations, and Xu and Jordan's covariances (centred on the current
    locations), in float64 from the current parameters' responsibilities."""
    pi = np.asarray(_simplex(params["weights_auto_loc"]), np.float64)
    mu = np.asarray(params["locs_auto_loc"], np.float64)
    cov = np.asarray(_covariances(params, covariance, reg), np.float64)
    logp = np.stack(
        [
            -0.5 * np.einsum("nd,de,ne->n", x - mu[k], np.linalg.inv(cov[k]), x - mu[k])
            - 0.5 * np.linalg.slogdet(2 * np.pi * cov[k])[1]
            for k in range(K)
        ],
        axis=1,
    ) + np.log(pi)
    r = np.exp(logp - logp.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    nk = r.sum(axis=0)
    locs = (r.T @ x) / nk[:, None]
    diff = x[:, None, :] - mu[None]
    scatter = np.einsum("nk,nkd,nke->kde", r, diff, diff)  # around the current locations
    if covariance in ("tied", "tied-diag"):
        new = np.broadcast_to(scatter.sum(0) / len(x), (K, D, D))
    else:
        new = scatter / nk[:, None, None]
    if covariance in ("diag", "tied-diag"):
        new = np.diagonal(new, axis1=-2, axis2=-1)[..., None] * np.eye(D)
    elif covariance == "spherical":
        new = (np.trace(new, axis1=-2, axis2=-1) / D)[:, None, None] * np.eye(D)
    return nk / len(x), locs, new


def _start(covariance: str, key: int) -> dict:
    rng = np.random.default_rng(key)
    params = {
        "weights_auto_loc": jnp.asarray(rng.normal(0, 0.3, K - 1), jnp.float32),
        "locs_auto_loc": jnp.asarray(rng.normal(0, 1.5, (K, D)), jnp.float32),
    }
    if covariance in ("full", "tied"):
        shape = (K, D) if covariance == "full" else (D,)
        params["scales_auto_loc"] = jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32)
        corr_shape = (*shape[:-1], D * (D - 1) // 2)
        params["corr_auto_loc"] = jnp.asarray(rng.normal(0, 0.3, corr_shape), jnp.float32)
    else:
        shape = {"diag": (K, D), "tied-diag": (D,), "spherical": (K,)}[covariance]
        params["scale_auto_loc"] = jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32)
    return params


def _data(key: int) -> np.ndarray:
    rng = np.random.default_rng(key)
    centres = np.array([[-3.0, 0.0, 1.0], [2.0, 2.0, -1.0], [0.0, -3.0, 0.0]])
    mix = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 0.8]])
    labels = rng.choice(K, N, p=[0.5, 0.3, 0.2])
    return centres[labels] + rng.normal(size=(N, D)) @ mix


@pytest.mark.parametrize("reg", [0.0, 1e-2])
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_one_step_is_em(covariance: str, reg: float) -> None:
    """From any start, one preconditioned step lands where EM's closed form does (weights,
    locations; covariances about the current locations), whatever the covariance type."""
    x = _data(0)
    params = _start(covariance, 1)
    grads = jax.grad(_loss)(params, jnp.asarray(x, jnp.float32), covariance, reg)
    new = em_update(params, grads, covariance, K, reg, N)
    weights, locs, cov = _em_reference(params, x, covariance, reg)
    assert_allclose(np.asarray(_simplex(new["weights_auto_loc"])), weights, rtol=2e-4, atol=1e-6)
    assert_allclose(np.asarray(new["locs_auto_loc"]), locs, rtol=1e-3, atol=1e-4)
    assert_allclose(np.asarray(_covariances(new, covariance, reg)), cov, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_huge_gradient_never_leaves_the_support(covariance: str) -> None:
    """A gradient that would push a covariance out of positive definiteness (or a weight below
    zero): nothing becomes non-finite, the weights stay positive and the covariances positive
    definite."""
    params = _start(covariance, 2)
    grads = jax.tree.map(lambda v: jnp.full_like(v, 1e6), params)
    new = em_update(params, grads, covariance, K, 0.0, 10)
    for name, value in new.items():
        assert np.all(np.isfinite(np.asarray(value))), name
    weights = np.asarray(_simplex(new["weights_auto_loc"]))
    assert np.all(weights > 0) and abs(weights.sum() - 1) < 1e-5
    new_eig = np.linalg.eigvalsh(np.asarray(_covariances(new, covariance, 0.0), np.float64))
    assert np.all(new_eig > 0)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_component_on_repeated_values_shrinks_towards_the_floor(covariance: str) -> None:
    """EM's covariance for a component sitting on one repeated value is zero, below the floor:
    the step shrinks the site's covariance by at most 100x and stays finite, and repeated steps
    keep shrinking it (they do not stall at the first step's value)."""
    x = np.concatenate([_data(5)[:300], np.tile([[1.0, 1.0, 1.0]], (300, 1))])
    x32 = jnp.asarray(x, jnp.float32)
    params = _start(covariance, 6)
    params["locs_auto_loc"] = params["locs_auto_loc"].at[0].set(1.0)
    sizes = []
    for _ in range(3):
        grads = jax.grad(_loss)(params, x32, covariance, 1e-4)
        params = em_update(params, grads, covariance, K, 1e-4, len(x))
        for name, value in params.items():
            assert np.all(np.isfinite(np.asarray(value))), name
        sizes.append(np.linalg.det(np.asarray(_covariances(params, covariance, 0.0), np.float64)))
    assert np.all(np.asarray(sizes) > 0)
    assert np.min(sizes[2]) < np.min(sizes[0])


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_warm_refit_with_em_steps_matches_adam_in_fewer_steps(covariance: str) -> None:
    """A refit from the last model on a new window: EM-preconditioned steps reach Adam's
    optimum (or better) in fewer steps. (Held to 1e-5 nats per point: the trainer's refits stop
    by scikit-learn's looser rule, refit_tol.)"""
    config = FitConfig(n_components=K, covariance=covariance, refit_tol=1e-5)
    first = fit_map(_data(3), jax.random.PRNGKey(0), config)
    window = _data(4)
    em = fit_map(window, jax.random.PRNGKey(1), config, warm_start=first.params)
    adam = fit_map(
        window,
        jax.random.PRNGKey(1),
        dataclasses.replace(config, warm_em=False),
        warm_start=first.params,
    )
    assert em.converged
    assert em.n_steps < adam.n_steps
    assert em.final_loss / N <= adam.final_loss / N + 1e-5


def test_nearly_empty_component_does_not_freeze_the_other_weights() -> None:
    """The Dirichlet(0.5) prior's pseudo-counts take an empty component's EM weight below zero:
    that weight shrinks (never to zero or below), and the others still move to their counts."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(-3, 1, (300, D)), rng.normal(3, 1, (700, D))])
    params = _start("diag", 8)
    params["weights_auto_loc"] = _simplex.inv(jnp.asarray([0.5, 0.5 - 1e-5, 1e-5]))
    params["locs_auto_loc"] = jnp.asarray([[-3.0] * D, [3.0] * D, [30.0] * D])

    def map_loss(p: dict) -> jnp.ndarray:  # the likelihood and Dirichlet(0.5) on the weights
        return (
            _loss(p, jnp.asarray(x, jnp.float32), "diag", 0.0)
            + 0.5 * jnp.log(_simplex(p["weights_auto_loc"])).sum()
        )

    for _ in range(3):
        params = em_update(params, jax.grad(map_loss)(params), "diag", K, 0.0, len(x))
    weights = np.asarray(_simplex(params["weights_auto_loc"]))
    assert np.all(np.isfinite(weights)) and weights[2] > 0
    assert_allclose(weights[:2], [0.3, 0.7], atol=2e-3)


def _masked_loss(params: dict, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Diagonal mixture, missing coordinates marginalised (masked out of each point's density)."""
    pi = _simplex(params["weights_auto_loc"])
    var = jnp.exp(2 * params["scale_auto_loc"])  # (K, D)
    diff = x[:, None, :] - params["locs_auto_loc"][None]
    per = -0.5 * (diff**2 / var + jnp.log(2 * jnp.pi * var))
    logp = jnp.where(mask[:, None, :], per, 0.0).sum(-1)
    return -logsumexp(jnp.log(pi) + logp, axis=1).sum()


def test_rarely_observed_coordinate_converges_as_fast_as_the_others() -> None:
    """Missing values (diagonal types): a coordinate observed in 3% of points takes EM's step
    for its own count, so the refit settles in a few steps, not hundreds."""
    x = _data(9)
    mask = np.ones_like(x, bool)
    mask[:, 2] = np.random.default_rng(10).random(N) < 0.03
    xm, mm = jnp.asarray(np.where(mask, x, 0.0), jnp.float32), jnp.asarray(mask)
    params = _start("diag", 11)
    losses = []
    for _ in range(25):
        grads = jax.grad(_masked_loss)(params, xm, mm)
        params = em_update(params, grads, "diag", K, 0.0, N, mask.sum(axis=0))
        losses.append(float(_masked_loss(params, xm, mm)))
    assert np.all(np.diff(losses) <= 1e-3 * N * 1e-3)  # EM never makes it worse (to rounding)
    assert abs(losses[-1] - losses[-2]) / N < 1e-6


def test_a_nearly_empty_component_does_not_freeze_the_other_weights():
    """A weight of 1e-9 saturates its stick-breaking coordinate in float32; the EM step still
    moves the other weights to the data's proportions (70/30 here, from 47/50)."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, 700), rng.normal(5, 1, 300)]
    warm = MixtureParams(
        np.array([0.467373, 0.504474, 0.028153, 1e-9]) / 1.000000001,
        np.array([[0.0], [5.0], [1.5], [3.0]]),
        np.array([[1.0], [1.0], [0.6], [0.3]]),
    )
    result = fit_map(
        x, jax.random.PRNGKey(3), FitConfig(n_components=4, covariance="diag"), warm_start=warm
    )
    assert result.n_steps <= FitConfig().em_max_steps  # the warm EM path ran
    weights = result.params.weights
    assert_allclose(weights[0] + weights[2], 0.7, atol=0.03)
    assert_allclose(weights[1], 0.3, atol=0.03)
