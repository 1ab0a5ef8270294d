"""Log-likelihood and information criteria against scikit-learn's own scoring."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose
from sklearn.mixture import GaussianMixture

from mixture.evaluate import log_likelihood, n_free_parameters, score
from mixture.params import MixtureParams


def test_matches_sklearn_for_per_component_diagonal_scales():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal([0, 0], [1, 2], (300, 2)), rng.normal([5, 5], [0.5, 1], (200, 2))])
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(x)
    params = MixtureParams(gm.weights_, gm.means_, np.sqrt(gm.covariances_))
    assert_allclose(log_likelihood(x, params), gm.score_samples(x), rtol=1e-10)
    s = score(x, params)
    assert n_free_parameters(params) == gm._n_parameters()
    assert_allclose(s.bic, gm.bic(x), rtol=1e-10)
    assert_allclose(s.aic, gm.aic(x), rtol=1e-10)


def test_shared_scale_parameter_count():
    params = MixtureParams(np.array([0.5, 0.5]), np.zeros((2, 3)), np.ones(3))
    assert n_free_parameters(params) == 1 + 6 + 3
