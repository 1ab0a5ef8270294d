"""The candidates program ranks starts by the closed-form likelihood plus the model's priors:
the same losses as the model's TraceEnum_ELBO (the `losses` program), for every covariance
type, one component, padding rows and missing coordinates.

The random candidates share their scales, weights and correlations (only their locations
differ), so each case also puts a warm start of its own in slot 0: unequal weights, a scale
per component and dimension, correlated full covariances, K != D, so that a transposed or
misbroadcast scale, an ignored correlation factor or permuted weights change the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.fit import FitConfig, _warm_sites
from mixture.fit_data import prepare_window
from mixture.fit_programs import FitPrograms
from mixture.params import MixtureParams

pytestmark = pytest.mark.unit

# (covariance, K, D, missing coordinates, reg_covar): full and tied covariances fit complete
# points only (and in one dimension fit as diag and tied-diag).
CASES = [
    ("tied-diag", 2, 1, False, 1e-6),
    ("tied-diag", 3, 4, False, 1e-6),
    ("tied-diag", 2, 3, True, 1e-6),
    ("diag", 3, 4, False, 1e-6),
    ("diag", 3, 2, True, 1e-6),
    ("diag", 1, 2, True, 1e-6),
    ("spherical", 3, 2, False, 1e-6),
    ("spherical", 1, 3, True, 1e-6),
    ("tied", 3, 2, False, 1e-6),
    ("tied", 1, 3, False, 1e-6),
    ("full", 4, 3, False, 1e-6),
    ("full", 3, 2, False, 0.0),
    ("full", 1, 2, False, 1e-6),
    ("full", 2, 1, False, 1e-6),
]


def _points(dim: int, missing: bool, n: int = 123) -> np.ndarray:
    rng = np.random.default_rng(dim)
    half = n // 2
    x = np.concatenate([rng.normal(0, 1, (half, dim)), rng.normal(4, 0.5, (n - half, dim))])
    x = x @ np.triu(np.full((dim, dim), 0.3), 1) + x  # correlated coordinates
    if missing:  # a few missing coordinates (diagonal types fit them), never a whole point
        x[rng.choice(n, 15, replace=False), 0] = np.nan
    return x


def _warm_start(k: int, dim: int, seed: int) -> MixtureParams:
    """A model far from the random candidates: unequal weights, correlated unequal factors."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 2.0))
    locs = rng.normal(2.0, 1.5, (k, dim))
    factors = []
    for _ in range(k):
        a = rng.normal(size=(dim, dim)) * rng.uniform(0.3, 1.5, dim)
        factors.append(np.linalg.cholesky(a @ a.T + 0.2 * np.eye(dim)))
    return MixtureParams(weights, locs, np.array(factors))


def _ranked_and_exact(config: FitConfig, x: np.ndarray, warm: MixtureParams, seed: int):
    window = prepare_window(x, config)
    program = FitPrograms().program(config, window.dim)
    sites, usable = _warm_sites(window, config, warm)
    assert usable
    points, mask, n = window.sample(jax.random.PRNGKey(seed), config.score_points)
    values, ranked = program.candidates(
        jax.random.PRNGKey(seed),
        points,
        np.int32(n),
        window.priors_z,
        mask,
        sites,
        np.bool_(True),
        np.bool_(False),
    )
    exact = program.losses(values, points, window.priors_z, mask)
    return np.asarray(ranked, np.float64), np.asarray(exact, np.float64), window


@pytest.mark.parametrize(("covariance", "k", "dim", "missing", "reg_covar"), CASES)
def test_ranking_losses_equal_the_models_loss(covariance, k, dim, missing, reg_covar):
    config = FitConfig(k, covariance, n_init=6, n_best=2, reg_covar=reg_covar)
    for seed in range(3):
        ranked, exact, window = _ranked_and_exact(
            config, _points(dim, missing), _warm_start(k, dim, seed), seed
        )
        # The whole window is scored, with its padding rows: they must count for nothing.
        assert window.points.shape[0] > window.n
        assert np.all(np.isfinite(ranked))
        assert_allclose(ranked, exact, rtol=2e-6)
        _same_order(ranked, exact)


def test_a_drawn_scoring_sample_ranks_as_the_model_does():
    """A window bigger than the scoring sample: the losses of the drawn points agree too."""
    config = FitConfig(3, "full", n_init=8, n_best=2, score_points=256)
    ranked, exact, window = _ranked_and_exact(
        dataclasses.replace(config), _points(3, False, n=2000), _warm_start(3, 3, 7), 7
    )
    assert window.n > config.score_points
    assert_allclose(ranked, exact, rtol=2e-6)
    _same_order(ranked, exact)


def _same_order(ranked: np.ndarray, exact: np.ndarray) -> None:
    """Every pair the model's loss tells apart by more than the rounding keeps its order."""
    gap = np.abs(exact[:, None] - exact[None, :])
    apart = gap > 1e-5 * np.abs(exact).max()
    assert np.array_equal(
        np.sign(ranked[:, None] - ranked[None, :])[apart],
        np.sign(exact[:, None] - exact[None, :])[apart],
    )
