"""Covariance types: each fits as well as scikit-learn's EM (best of 10), round-trips through
`gmm-params/2`, and serves exactly; the floor keeps repeated values from collapsing a component."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import softmax
from sklearn.mixture import GaussianMixture

from mixture.classify import classifier_for
from mixture.covariance import COVARIANCES, check_covariance
from mixture.evaluate import component_log_pdf, log_likelihood
from mixture.fit import FitConfig, fit_map
from mixture.params import MixtureParams, ModelParams, ParamsError


def random_covariances(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """Unequal, correlated covariances (condition numbers up to ~20)."""
    out = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        out.append(q @ np.diag(rng.uniform(0.2, 2.0, d) ** 2) @ q.T)
    return np.stack(out)


def sample(rng: np.random.Generator, k: int, d: int, n: int, covariance: str) -> np.ndarray:
    locs = rng.normal(0, 4.0, (k, d))
    covs = random_covariances(rng, k, d)
    if covariance == "tied":
        covs[:] = covs[0]
    elif covariance == "diag":
        covs = np.stack([np.diag(np.diag(c)) for c in covs])
    elif covariance == "spherical":
        covs = np.stack([np.eye(d) * np.trace(c) / d for c in covs])
    weights = rng.dirichlet(np.full(k, 5.0))
    z = rng.choice(k, size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    return locs[z] + np.einsum("nij,nj->ni", chol[z], rng.normal(size=(n, d)))


# (K, D, covariance): K = 3..5, D = 2..8, every scikit-learn type.
CASES = [(3, 2, "full"), (5, 8, "full"), (4, 5, "tied"), (3, 3, "diag"), (4, 2, "spherical")]


@pytest.mark.slow
@pytest.mark.parametrize(("k", "d", "covariance"), CASES)
def test_fit_is_within_a_hundredth_of_a_nat_of_sklearn_best_of_ten(k, d, covariance):
    rng = np.random.default_rng(k * 10 + d)
    x = sample(rng, k, d, 3000, covariance)
    fit = fit_map(x, jax.random.PRNGKey(0), FitConfig(n_components=k, covariance=covariance))
    ours = log_likelihood(x, fit.params).mean()
    sk = GaussianMixture(k, covariance_type=covariance, n_init=10, random_state=0).fit(x)
    assert ours >= sk.score(x) - 0.01, (ours, sk.score(x))


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_every_type_fits_round_trips_and_serves(covariance):
    rng = np.random.default_rng(7)
    x = sample(rng, 2, 3, 600, "full")
    fit = fit_map(x, jax.random.PRNGKey(1), FitConfig(n_components=2, covariance=covariance))
    model = ModelParams(1, fit.params, covariance=covariance)
    again = ModelParams.loads(model.dumps())
    assert again.covariance == covariance
    assert again.to_json()["schema"] == "gmm-params/2"
    for a, b in zip(again.mixture, model.mixture, strict=True):
        assert_allclose(a, b, rtol=1e-12)

    clf = classifier_for(again.mixture, max_batch=64)
    out = clf(x[:200], again.mixture)
    log_joint = np.log(again.mixture.weights) + component_log_pdf(x[:200], again.mixture)
    assert_allclose(out.probs, softmax(log_joint, axis=1), atol=1e-5)
    assert_allclose(out.log_likelihood, log_likelihood(x[:200], again.mixture), rtol=1e-5)
    top2 = np.sort(out.probs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert (out.assignment[clear] == out.probs.argmax(1)[clear]).all()


def test_one_dimensional_full_is_a_scale():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(6, 2, 300)])
    full = fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "full")).params
    diag = fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "diag")).params
    assert full.scale.shape == (2, 1, 1)
    assert_allclose(full.scale[:, 0, 0], diag.scale[:, 0], rtol=1e-6)


def test_repeated_values_do_not_collapse_a_component():
    """A third of the points sit on one value: scikit-learn needs reg_covar for this."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (400, 2)), np.full((200, 2), 3.0)])
    fit = fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "full", reg_covar=1e-4))
    assert all(np.all(np.isfinite(a)) for a in fit.params)
    sds = np.sqrt(np.diagonal(fit.params.scale @ np.swapaxes(fit.params.scale, 1, 2), 0, 1, 2))
    assert np.all(sds >= np.sqrt(1e-4) * x.std(axis=0) * 0.999)
    ModelParams(1, fit.params, covariance="full")  # valid, servable


def test_older_records_and_names_still_load():
    v1 = {
        "schema": "gmm-params/1",
        "version": 2,
        "weights": [0.5, 0.5],
        "locs": [[0, 0], [1, 1]],
        "scale": [[1, 2], [3, 4]],
    }
    model = ModelParams.from_json(v1)
    assert model.covariance == "diag"
    assert check_covariance("per-component") == "diag"
    assert check_covariance("shared") == "tied-diag"


GOOD2 = {"schema": "gmm-params/2", "version": 1, "weights": [0.5, 0.5], "locs": [[0, 0], [1, 1]]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"covariance": "full", "scale_tril": [[[1, 0], [0, 1]]]}, r"shape \(2, 2, 2\)"),
        ({"covariance": "full", "scale_tril": [[[1, 1], [0, 1]], [[1, 0], [0, 1]]]}, "lower tri"),
        ({"covariance": "full", "scale_tril": [[[1, 0], [0, -1]], [[1, 0], [0, 1]]]}, "positive"),
        ({"covariance": "full", "scale_tril": [[[1, 0], [1e5, 1]], [[1, 0], [0, 1]]]}, "ill-con"),
        ({"covariance": "full", "scale_tril": [[[1, 0], [0, 1e-40]], [[1, 0], [0, 1]]]}, "within"),
        ({"covariance": "diag", "scale": [[1e-46, 1], [1, 1]]}, "within"),
        ({"locs": [[0, 0], [1e39, 3]], "covariance": "diag", "scale": [[1, 1], [1, 1]]}, "locs"),
        ({"covariance": "tied", "scale_tril": [[1, 0], [0.5, 1]], "scale": 1}, None),
        ({"covariance": "tied"}, "missing field 'scale_tril'"),
        ({"covariance": "spherical", "scale": [1, 2, 3]}, r"shape \(2,\)"),
        ({"covariance": "spherical", "scale": [1, -2]}, "positive"),
        ({"covariance": "banded", "scale": [1, 2]}, "unknown covariance"),
        ({"scale": [1, 2]}, "needs a covariance type"),
    ],
)
def test_v2_validation(change, reason):
    obj = {**GOOD2, **change}
    if reason is None:
        assert ModelParams.from_json(obj).mixture.scale.shape == (2, 2, 2)
        return
    with pytest.raises(ParamsError, match=reason):
        ModelParams.from_json(obj)


def test_a_tied_record_must_be_tied():
    tril = np.stack([np.eye(2), 2 * np.eye(2)])
    with pytest.raises(ParamsError, match="same for every component"):
        ModelParams(
            1, MixtureParams(np.array([0.5, 0.5]), np.zeros((2, 2)), tril), covariance="tied"
        )


def test_units_do_not_make_a_covariance_ill_conditioned():
    """Columns whose spreads differ by 1e8 (epoch seconds beside a ratio) are fine when
    uncorrelated: conditioning is judged on the correlations."""
    tril = np.stack([np.diag([2e4, 1e-3]), np.diag([1e4, 2e-3])])
    model = ModelParams(
        1, MixtureParams(np.array([0.5, 0.5]), np.zeros((2, 2)), tril), covariance="full"
    )
    assert ModelParams.loads(model.dumps()).covariance == "full"


def test_size_limits():
    k, d = 40, 30  # 36,000 covariance entries
    tril = np.broadcast_to(np.eye(d), (k, d, d))
    with pytest.raises(ParamsError, match="covariance entries"):
        ModelParams(1, MixtureParams(np.full(k, 1 / k), np.zeros((k, d)), tril), covariance="full")


def test_a_warm_start_pinned_at_the_floor_is_usable():
    """A component on repeated values sits at the covariance floor; taking the floor off for
    the warm start must not leave an invalid correlation (the next window may be wider)."""
    from mixture.model import serving_to_sites

    s = 3e-5
    chol = np.linalg.cholesky(
        np.array([[s * s, 0.5 * s * s], [0.5 * s * s, s * s]]) + 1e-6 * np.eye(2)
    )
    current = MixtureParams(
        np.array([0.5, 0.5]), np.array([[0.0, 0.0], [3.0, 3.0]]), np.stack([chol / 2, np.eye(2)])
    )
    sites = serving_to_sites(current, "full", 1e-6)
    assert np.all(np.isfinite(sites["corr"])) and np.all(sites["scales"] > 0)
    rng = np.random.default_rng(8)
    x = np.concatenate([np.full((200, 2), 0.0), rng.normal(3, 1, (300, 2))])
    fit = fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "full"), warm_start=current)
    assert all(np.all(np.isfinite(a)) for a in fit.params)
