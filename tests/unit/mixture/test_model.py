"""The fit model's densities: CholeskyNormal and its product form for standardised points are
MultivariateNormal's density in every shape the model gives them (the residual form stays exact
for points far from the origin), and ZeroFilledMask is MaskedDistribution's without
broadcasting the points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpy.testing import assert_allclose

from mixture.model import CholeskyNormal, StandardisedCholeskyNormal, ZeroFilledMask

K, D, N = 4, 8, 300


def _factors(rng: np.random.Generator, count: int) -> np.ndarray:
    a = rng.normal(size=(count, D, D)) * 0.4
    return np.linalg.cholesky(a @ a.transpose(0, 2, 1) + 0.05 * np.eye(D)).astype(np.float32)


@pytest.mark.parametrize(
    "shapes",
    ["full (K, 1) batch", "tied: one factor", "one component", "factors per point"],
)
@pytest.mark.parametrize("family", [CholeskyNormal, StandardisedCholeskyNormal])
def test_cholesky_normal_is_the_multivariate_normal_density(shapes, family):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32))
    locs = jnp.asarray(rng.normal(size=(K, D)).astype(np.float32))
    trils = jnp.asarray(_factors(rng, K))
    loc, tril = {
        "full (K, 1) batch": (locs[:, None], trils[:, None]),
        "tied: one factor": (locs[:, None], trils[0]),
        "one component": (locs[0], trils[0]),
        "factors per point": (locs[:, None], jnp.broadcast_to(trils[:, None], (K, N, D, D))),
    }[shapes]
    ours = family(loc, scale_tril=tril).log_prob(x)
    reference = dist.MultivariateNormal(loc, scale_tril=tril).log_prob(x)
    assert ours.shape == reference.shape
    assert_allclose(ours, reference, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("family", [CholeskyNormal, StandardisedCholeskyNormal])
def test_cholesky_normal_gradients_match_the_reference(family):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32))
    locs = jnp.asarray(rng.normal(size=(K, 1, D)).astype(np.float32))
    trils = jnp.asarray(_factors(rng, K))[:, None]

    def total(family):
        return lambda loc, tril: family(loc, scale_tril=tril).log_prob(x).sum()

    ours = jax.grad(total(family), argnums=(0, 1))(locs, trils)
    reference = jax.grad(total(dist.MultivariateNormal), argnums=(0, 1))(locs, trils)
    for a, b in zip(ours, reference, strict=True):
        assert_allclose(a, b, rtol=1e-3, atol=1e-2)


def test_zero_filled_mask_is_the_masked_density_and_leaves_the_points_unbroadcast():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32)).at[N - 20 :].set(0.0)
    rows = jnp.arange(N) < N - 20  # the padding rows are zeros, as fit_data pads them
    base = CholeskyNormal(
        jnp.asarray(rng.normal(size=(K, 1, D)).astype(np.float32)),
        scale_tril=jnp.asarray(_factors(rng, K))[:, None],
    )
    seen = []

    class Spy(CholeskyNormal):
        def log_prob(self, value):
            seen.append(jnp.shape(value))
            return super().log_prob(value)

    spy = Spy(base.loc, scale_tril=base.scale_tril)
    ours = ZeroFilledMask(spy, rows).log_prob(x)
    assert seen == [(N, D)]  # MaskedDistribution hands the density (K, N, D)
    reference = dist.MaskedDistribution(base, rows).log_prob(x)
    assert_allclose(ours, reference, rtol=1e-6, atol=1e-5)
    assert np.all(np.asarray(ours)[:, N - 20 :] == 0.0)
    unmasked = ZeroFilledMask(base, True).log_prob(x)
    assert_allclose(unmasked, base.log_prob(x), rtol=1e-6)


def test_the_residual_form_stays_exact_for_points_far_from_the_origin():
    """Data units (assignment_model): an offset of 1e5 and a spread of 0.1 cancel most digits of
    inv @ x - inv @ loc in float32, not of inv @ (x - loc)."""
    rng = np.random.default_rng(6)
    loc = (1e5 + rng.normal(size=D)).astype(np.float32)
    x = (loc + 0.1 * rng.normal(size=(N, D))).astype(np.float32)
    z = (x.astype(np.float64) - loc.astype(np.float64)) / np.float64(np.float32(0.1))
    scale = np.log(np.float64(np.float32(0.1)))
    reference = -0.5 * (z * z).sum(-1) - D * scale - 0.5 * D * np.log(2 * np.pi)
    tril = jnp.eye(D, dtype=jnp.float32) * np.float32(0.1)
    ours = CholeskyNormal(jnp.asarray(loc), scale_tril=tril).log_prob(jnp.asarray(x))
    assert_allclose(ours, reference, atol=1e-3)
