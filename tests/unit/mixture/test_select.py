"""Automatic K by BIC agrees with scikit-learn's BIC choice; padded windows share programs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from mixture.fit import FitConfig, fit_compilations, fit_map, padded_size
from mixture.select import fit_auto


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_auto_k_agrees_with_sklearn_bic(covariance):
    rng = np.random.default_rng(1)
    # Clear structure for the type: correlated clusters for full, axis-aligned ones for diag
    # (a diagonal mixture needs extra components for a correlated cluster).
    rho = 0.6 if covariance == "full" else 0.0
    x = np.concatenate(
        [
            rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], 400),
            rng.multivariate_normal([6, 0], [[1, -rho], [-rho, 2]], 300),
            rng.multivariate_normal([3, 6], np.eye(2) * 0.5, 300),
        ]
    )
    selection = fit_auto(x, jax.random.PRNGKey(0), FitConfig(covariance=covariance), 5)
    sk_bic = {
        k: GaussianMixture(k, covariance_type=covariance, n_init=5, random_state=0).fit(x).bic(x)
        for k in range(1, 6)
    }
    assert selection.n_components == min(sk_bic, key=sk_bic.get) == 3
    assert sorted(selection.bics) == [1, 2, 3, 4, 5]
    # Where both fits find the same optimum (K <= 3 here) the BICs agree.
    for k in (1, 2, 3):
        assert abs(selection.bics[k] - sk_bic[k]) < 1e-3 * abs(sk_bic[k])


def test_one_component_fits():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, (500, 2))
    fit = fit_map(x, jax.random.PRNGKey(0), FitConfig(n_components=1, covariance="full"))
    np.testing.assert_allclose(fit.params.weights, [1.0])
    np.testing.assert_allclose(fit.params.locs[0], x.mean(0), atol=1e-3)


def test_padded_sizes_are_few_and_tight():
    sizes = {padded_size(n) for n in range(1, 200_001)}
    assert len(sizes) <= 30
    for n in (1, 255, 256, 257, 1000, 65_536):
        assert n <= padded_size(n) <= max(256, n * 3 // 2 + 1)
    # Above 2^16, where the fit's time is the window's: under an eighth wasted.
    for n in (65_537, 73_729, 99_999, 100_000, 1_000_000, 2**20 + 1, 10_000_000):
        assert n <= padded_size(n) < n * 9 / 8
    assert padded_size(100_000) == 106_496  # the trainer's default window


def test_windows_of_varying_size_do_not_recompile():
    rng = np.random.default_rng(3)
    config = FitConfig(n_components=2, n_init=8, max_steps=50)
    fit_map(rng.normal(size=300), jax.random.PRNGKey(0), config)
    before = fit_compilations()
    for n in (257, 301, 350, 384):  # all pad to 384
        fit_map(rng.normal(size=n), jax.random.PRNGKey(n), config)
    assert fit_compilations() == before
