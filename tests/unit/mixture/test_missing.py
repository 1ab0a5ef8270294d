"""Missing coordinates (null on the wire, NaN in arrays): classification marginalises them
exactly, for every layout, in the probabilities and the infer_discrete assignment; the fit uses
the observed coordinates."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import softmax

from mixture.classify import make_classifier
from mixture.evaluate import component_log_pdf, log_likelihood
from mixture.fit import DataError, FitConfig, fit_map
from mixture.params import MixtureParams
from mixture.points import PointError, decode_point

K, D = 3, 3


def params_for(layout: str, rng: np.random.Generator) -> MixtureParams:
    if layout == "shared":
        scale = rng.uniform(0.5, 2.0, D)
    elif layout == "diagonal":
        scale = rng.uniform(0.5, 2.0, (K, D))
    else:
        a = rng.normal(size=(K, D, D))
        scale = np.linalg.cholesky(a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(D))
    return MixtureParams(rng.dirichlet(np.ones(K)), rng.normal(0, 3, (K, D)), scale)


def with_missing(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(0, 3, (n, D))
    x[rng.random((n, D)) < 0.35] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 1.0
    return x


@pytest.mark.parametrize("layout", ["shared", "diagonal", "cholesky"])
def test_marginal_probabilities_and_map_are_exact(layout):
    rng = np.random.default_rng(11)
    params = params_for(layout, rng)
    x = with_missing(rng, 200)
    out = make_classifier(K, D, layout=layout, max_batch=64)(x, params)
    want = softmax(np.log(params.weights) + component_log_pdf(x, params), axis=1)
    assert_allclose(out.probs, want, atol=1e-5)
    assert_allclose(out.log_likelihood, log_likelihood(x, params), rtol=1e-5, atol=1e-5)
    # At temperature 0 the infer_discrete assignment is an argmax of the returned probabilities
    # (where two are equal in float32, either).
    assert (out.probs[np.arange(len(out.probs)), out.assignment] == out.probs.max(1)).all()


def test_the_marginal_is_the_lower_dimensional_model():
    """Classifying [x0, null, x2] is classifying [x0, x2] under the (0, 2) marginal."""
    rng = np.random.default_rng(12)
    params = params_for("cholesky", rng)
    cov = params.scale @ np.swapaxes(params.scale, 1, 2)
    sub = MixtureParams(
        params.weights, params.locs[:, [0, 2]], np.linalg.cholesky(cov[:, [0, 2]][:, :, [0, 2]])
    )
    x = rng.normal(0, 3, (50, 2))
    full = np.column_stack([x[:, 0], np.full(50, np.nan), x[:, 1]])
    a = make_classifier(K, D, layout="cholesky", max_batch=64)(full, params)
    b = make_classifier(K, 2, layout="cholesky", max_batch=64)(x, sub)
    assert_allclose(a.probs, b.probs, atol=1e-5)
    assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-5)


def test_temperature_one_draws_from_the_marginal_posterior():
    rng = np.random.default_rng(13)
    params = params_for("diagonal", rng)
    point = np.array([[0.5, np.nan, -0.5]])
    x = np.repeat(point, 4000, axis=0)
    clf = make_classifier(K, D, layout="diagonal", temperature=1, max_batch=4096)
    out = clf(x, params, jax.random.PRNGKey(0))
    freq = np.bincount(out.assignment, minlength=K) / len(x)
    assert_allclose(freq, out.probs[0], atol=0.03)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"x": [null, null]}', "no_observed_values"),
        (b'{"x": null}', "no_observed_values"),
        (b'{"x": [null, "a", 1]}', "not_numeric"),
        (b'{"x": [null, 1e999, 1]}', "not_finite"),
        (b'{"x": [null, 1]}', "wrong_dim"),
    ],
)
def test_null_coordinates_on_the_wire(raw, reason):
    with pytest.raises(PointError) as exc:
        decode_point(raw, 3)
    assert exc.value.reason == reason


def test_a_null_coordinate_is_accepted():
    assert decode_point(b'{"x": [1.5, null, 2]}', 3).x == [1.5, None, 2]


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_fit_uses_the_observed_coordinates(covariance):
    rng = np.random.default_rng(14)
    x = np.concatenate([rng.normal([0, 0, 0], 1, (600, 3)), rng.normal([5, 3, -2], 1, (400, 3))])
    holes = x.copy()
    holes[rng.random(x.shape) < 0.2] = np.nan
    holes[np.isnan(holes).all(axis=1), 0] = 0.0
    fit = fit_map(holes, jax.random.PRNGKey(0), FitConfig(2, covariance)).params
    order = np.argsort(fit.locs[:, 0])
    assert_allclose(fit.locs[order], [[0, 0, 0], [5, 3, -2]], atol=0.25)
    assert_allclose(np.sort(fit.weights), [0.4, 0.6], atol=0.03)


def test_a_point_with_nothing_observed_cannot_be_fit():
    x = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 1.0]])
    with pytest.raises(DataError, match="no observed value"):
        fit_map(x, jax.random.PRNGKey(0), FitConfig(2))


def test_a_rows_result_does_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(15)
    params = params_for("cholesky", rng)
    clf = make_classifier(K, D, layout="cholesky", max_batch=64)
    complete = rng.normal(0, 3, (5, D))
    alone = clf(complete, params)
    mixed = clf(np.vstack([complete, [[1.0, np.nan, 2.0]]]), params)
    np.testing.assert_array_equal(mixed.probs[:5], alone.probs)
    np.testing.assert_array_equal(mixed.log_likelihood[:5], alone.log_likelihood)


def test_full_fits_need_enough_complete_points():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(40, 3))
    x[:35, 1] = np.nan  # 5 complete points left: K=2 full in D=3 needs 8
    with pytest.raises(DataError, match="5 complete point"):
        fit_map(x, jax.random.PRNGKey(0), FitConfig(2, "full"))
