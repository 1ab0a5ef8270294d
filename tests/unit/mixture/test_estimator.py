"""`MapGaussianMixture`: scikit-learn's own estimator checks, the same fit as scikit-learn's
`GaussianMixture` on the same data, missing values marginalised, and models that move to and from
`GaussianMixture` and `gmm-params/2` with the worker's classifier giving the same answers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mixture.classify import classifier_for
from mixture.estimator import MapGaussianMixture
from mixture.params import ModelParams, ParamsError

SKLEARN_TYPES = ("full", "tied", "diag", "spherical")
ALL_TYPES = (*SKLEARN_TYPES, "tied-diag")


def blobs(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three clusters in 2-D, of different shapes and weights."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, [0.5, 0.3, 0.2])
    centres = np.array([[0.0, 0.0], [8.0, 1.0], [2.0, 9.0]])
    shapes = [np.array([[1.0, 0.6], [0.6, 1.0]]), np.diag([0.5, 2.0]), np.eye(2) * 0.8]
    x = np.concatenate(
        [
            rng.multivariate_normal(c, s, size)
            for c, s, size in zip(centres, shapes, sizes, strict=True)
        ]
    )
    y = np.repeat(np.arange(3), sizes)
    order = rng.permutation(n)  # shuffled, as folds of a cross-validation expect
    return x[order], y[order]


# scikit-learn's checks (its own test suite for estimators). check_array_api_input skips unless
# SCIPY_ARRAY_API is set (scikit-learn's own condition; the estimator computes in numpy and JAX).
@parametrize_with_checks([MapGaussianMixture(random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_fits_as_well_as_scikit_learn_on_the_same_data(covariance):
    x, y = blobs()
    ours = MapGaussianMixture(3, covariance_type=covariance, n_init=4, random_state=0).fit(x)
    theirs = GaussianMixture(3, covariance_type=covariance, n_init=4, random_state=0).fit(x)
    assert ours.converged_ and ours.n_iter_ >= 1
    assert ours.score(x) >= theirs.score(x) - 1e-3  # nats per point
    assert adjusted_rand_score(ours.predict(x), theirs.predict(x)) > 0.99
    assert adjusted_rand_score(ours.predict(x), y) > 0.95
    assert_allclose(ours.weights_.sum(), 1.0, rtol=1e-6)
    assert ours.means_.shape == theirs.means_.shape
    assert ours.covariances_.shape == theirs.covariances_.shape
    assert ours.precisions_cholesky_.shape == theirs.precisions_cholesky_.shape
    # The information criteria count free parameters as scikit-learn does.
    same = MapGaussianMixture.from_gaussian_mixture(theirs)
    assert_allclose(same.bic(x), theirs.bic(x), rtol=1e-10)
    assert_allclose(same.aic(x), theirs.aic(x), rtol=1e-10)
    assert np.isfinite(ours.lower_bound_) and len(ours.lower_bounds_) == ours.n_iter_


@pytest.mark.parametrize("covariance", SKLEARN_TYPES)
def test_gaussian_mixture_round_trip(covariance):
    x, _ = blobs(300, seed=1)
    gm = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(x)
    ours = MapGaussianMixture.from_gaussian_mixture(gm)
    assert ours.covariance_type == covariance
    assert_allclose(ours.score_samples(x), gm.score_samples(x), rtol=1e-10)
    assert_allclose(ours.predict_proba(x), gm.predict_proba(x), atol=1e-10)
    assert (ours.predict(x) == gm.predict(x)).all()
    back = ours.to_gaussian_mixture()
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert_allclose(getattr(back, name), getattr(gm, name), rtol=1e-9, atol=1e-12, err_msg=name)
        assert_allclose(getattr(ours, name), getattr(gm, name), rtol=1e-9, atol=1e-12, err_msg=name)
    assert_allclose(back.score_samples(x), gm.score_samples(x), rtol=1e-10)
    assert back.sample(5)[0].shape == (5, 2)


@pytest.mark.parametrize("covariance", ALL_TYPES)
def test_params_round_trip_and_the_worker_agrees(covariance, tmp_path):
    x, _ = blobs(400, seed=2)
    ours = MapGaussianMixture(3, covariance_type=covariance, random_state=1).fit(x)
    model = ours.to_params(version=0)
    assert model.to_json()["schema"] == "gmm-params/2"
    assert model.covariance == covariance
    path = tmp_path / "params.json"
    path.write_text(model.dumps())
    for loaded in (
        MapGaussianMixture.from_params(path),
        MapGaussianMixture.from_params(model.dumps()),
    ):
        assert loaded.covariance_type == covariance
        assert_allclose(loaded.score_samples(x), ours.score_samples(x), rtol=1e-12)
        assert (loaded.predict(x) == ours.predict(x)).all()
    # The worker's jitted classifier (float32, infer_discrete at temperature 0) on the served
    # record gives the same components, except where two are within float32 of a tie.
    served = ModelParams.loads(model.dumps()).mixture
    out = classifier_for(served, max_batch=512)(x, served)
    proba = ours.predict_proba(x)
    top2 = np.sort(proba, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.95
    assert (out.assignment[clear] == ours.predict(x)[clear]).all()
    assert_allclose(out.log_likelihood, ours.score_samples(x), rtol=1e-5)
    # To scikit-learn and back: tied-diag goes out as diag (scikit-learn has no tied diagonal).
    gm = ours.to_gaussian_mixture()
    assert gm.covariance_type == ("diag" if covariance == "tied-diag" else covariance)
    assert_allclose(gm.score_samples(x), ours.score_samples(x), rtol=1e-10)


def test_missing_values_are_marginalised():
    x, _ = blobs(500, seed=3)
    rng = np.random.default_rng(4)
    holes = x.copy()
    holes[rng.random(len(x)) < 0.2, 1] = np.nan
    est = MapGaussianMixture(3, covariance_type="diag", random_state=0).fit(holes)
    assert (
        adjusted_rand_score(
            est.predict(x),
            MapGaussianMixture(3, covariance_type="diag", random_state=0).fit(x).predict(x),
        )
        > 0.95
    )
    # A row [x0, NaN] scores as x0 under the mixture's first-coordinate marginal.
    row = np.array([[1.5, np.nan]])
    sd = np.sqrt(est.covariances_[:, 0])
    want = np.log(
        sum(
            w * multivariate_normal(m[0], s**2).pdf(1.5)
            for w, m, s in zip(est.weights_, est.means_, sd, strict=True)
        )
    )
    assert_allclose(est.score_samples(row), [want], rtol=1e-10)
    assert_allclose(est.predict_proba(holes).sum(axis=1), 1.0, rtol=1e-12)
    # Full covariances marginalise in predict too.
    full = MapGaussianMixture(3, random_state=0).fit(x)
    cov = full.covariances_
    want = np.log(
        sum(
            w * multivariate_normal(m[0], c[0, 0]).pdf(1.5)
            for w, m, c in zip(full.weights_, full.means_, cov, strict=True)
        )
    )
    assert_allclose(full.score_samples(row), [want], rtol=1e-10)
    with pytest.raises(ValueError, match="no observed value"):
        full.predict(np.array([[np.nan, np.nan]]))
    with pytest.raises(ValueError, match="infinity"):
        full.predict(np.array([[np.inf, 0.0]]))


def test_auto_chooses_k_by_bic_and_works_in_a_pipeline_and_a_grid_search():
    x, _ = blobs(450, seed=5)
    auto = MapGaussianMixture("auto", max_components=4, random_state=0).fit(x)
    assert auto.n_components_ == 3
    assert set(auto.bics_) == {1, 2, 3, 4} and min(auto.bics_, key=auto.bics_.get) == 3
    pipe = make_pipeline(StandardScaler(), MapGaussianMixture(3, random_state=0)).fit(x)
    assert np.isfinite(pipe.score(x))
    # Cross-validating K by held-out log-likelihood.
    search = GridSearchCV(MapGaussianMixture(random_state=0), {"n_components": [1, 3]}, cv=3)
    assert search.fit(x).best_params_ == {"n_components": 3}


def test_sample_warm_start_and_pickle():
    x, _ = blobs(300, seed=6)
    est = MapGaussianMixture(3, random_state=0).fit(x)
    draws, labels = est.sample(1000)
    assert draws.shape == (1000, 2) and set(np.unique(labels)) <= {0, 1, 2}
    again, _ = est.sample(1000)
    assert_allclose(draws, again)  # random_state seeds sampling
    assert abs(est.score(draws) - est.score(x)) < 0.3
    warm = MapGaussianMixture(3, warm_start=True, random_state=0).fit(x)
    first = warm.means_.copy()
    warm.fit(x[::-1])  # the same window: the refit starts (and stays) at the optimum
    assert_allclose(warm.means_, first, atol=1e-3)
    copy = pickle.loads(pickle.dumps(est))  # scikit-learn's own persistence (not on the wire)
    assert (copy.predict(x) == est.predict(x)).all()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_components": 0}, "n_components must be"),
        ({"n_components": "many"}, "n_components must be"),
        ({"covariance_type": "banded"}, "covariance_type must be"),
        ({"init_params": "kmeans"}, "init_params must be"),
        ({"priors": "flat"}, "priors must be"),
        ({"n_init": 0}, "n_init must be"),
        ({"max_iter": 1}, "max_iter must be"),
        ({"reg_covar": -1.0}, "reg_covar must be"),
        ({"tol": float("nan")}, "tol must be"),
    ],
)
def test_bad_parameters_are_one_line_errors(params, match):
    with pytest.raises(ValueError, match=match):
        MapGaussianMixture(**params).fit(blobs(50)[0])


def test_records_that_cannot_be_served_are_refused():
    with pytest.raises(ParamsError):
        MapGaussianMixture.from_params('{"schema": "gmm-params/2", "version": 1}')
    gm = GaussianMixture(2).fit(blobs(100)[0])
    gm.covariances_ = -gm.covariances_
    with pytest.raises(ValueError, match="positive definite"):
        MapGaussianMixture.from_gaussian_mixture(gm)
    with pytest.raises(ValueError, match="not fitted"):
        MapGaussianMixture.from_gaussian_mixture(GaussianMixture(2))
