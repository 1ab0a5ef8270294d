"""The candidates program ranks starts by the closed-form likelihood plus the model's priors:
the same losses as the model's TraceEnum_ELBO (the `losses` program), for every covariance
type, one component, padding rows and missing coordinates."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.fit import FitConfig, _warm_sites
from mixture.fit_data import prepare_window
from mixture.fit_programs import FitPrograms

pytestmark = pytest.mark.unit

# (covariance, K, D, missing): full and tied covariances fit complete points only.
CASES = [
    ("tied-diag", 2, 1, False),
    ("diag", 3, 3, False),
    ("diag", 3, 3, True),
    ("spherical", 2, 2, False),
    ("spherical", 2, 2, True),
    ("tied-diag", 2, 3, True),
    ("tied", 3, 2, False),
    ("full", 3, 3, False),
    ("full", 1, 2, False),
    ("diag", 1, 2, True),
]


def _points(dim: int, missing: bool) -> np.ndarray:
    rng = np.random.default_rng(dim)
    x = np.concatenate([rng.normal(0, 1, (70, dim)), rng.normal(4, 0.5, (53, dim))])
    if missing:  # a few missing coordinates (diagonal types fit them), never a whole point
        x[rng.choice(len(x), 15, replace=False), 0] = np.nan
    return x


@pytest.mark.parametrize(("covariance", "k", "dim", "missing"), CASES)
def test_ranking_losses_equal_the_models_loss(covariance: str, k: int, dim: int, missing: bool):
    config = FitConfig(k, covariance, n_init=6, n_best=2, score_points=64)
    window = prepare_window(_points(dim, missing), config)
    program = FitPrograms().program(config, dim)
    warm, _ = _warm_sites(window, config, None)
    # 123 points padded to the window's size: padding rows must count for nothing in either.
    assert window.points.shape[0] > window.n
    values, ranked = program.candidates(
        jax.random.PRNGKey(0),
        window.points,
        np.int32(window.n),
        window.priors_z,
        window.mask,
        warm,
        np.bool_(False),
        np.bool_(True),
    )
    exact = program.losses(values, window.points, window.priors_z, window.mask)
    assert np.all(np.isfinite(np.asarray(ranked)))
    assert_allclose(np.asarray(ranked), np.asarray(exact), rtol=2e-6)
    # The ranking is the point: the same order.
    assert np.argsort(np.asarray(ranked)).tolist() == np.argsort(np.asarray(exact)).tolist()
