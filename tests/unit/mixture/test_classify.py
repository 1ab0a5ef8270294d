"""The jitted infer_discrete classifier: exact posteriors, MAP = argmax, sampling, no recompiles."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats
from scipy.special import logsumexp

from mixture.classify import bucket_sizes, make_classifier
from mixture.params import MixtureParams

SEED_PARAMS = MixtureParams(
    np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
)
K3 = MixtureParams(
    np.array([0.5, 0.3, 0.2]),
    np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 3.0]]),
    np.array([[1.0, 0.7], [0.8, 1.2], [0.6, 0.9]]),
)


def closed_form(x: np.ndarray, p: MixtureParams) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: p(component | x) and log p(x)."""
    scale = p.scale if p.scale.ndim == 2 else p.scale[None]
    lj = np.log(p.weights) + stats.norm.logpdf(x[:, None, :], p.locs, scale).sum(-1)
    lp = logsumexp(lj, axis=1)
    return np.exp(lj - lp[:, None]), lp


@pytest.mark.parametrize("temperature", [0, 1])
@pytest.mark.parametrize("params", [SEED_PARAMS, K3], ids=["seed-1d", "k3-2d-per-component"])
def test_probs_and_log_likelihood_match_closed_form(params, temperature):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, params.dim)) * 4 + params.locs.mean(0)
    clf = make_classifier(
        params.n_components,
        params.dim,
        per_component_scale=params.per_component_scale,
        temperature=temperature,
        max_batch=256,
    )
    out = clf(x, params, jax.random.PRNGKey(1))
    probs, log_px = closed_form(x, params)
    assert out.assignment.shape == (500,)
    assert_allclose(out.probs, probs, atol=1e-5)
    assert_allclose(out.log_likelihood, log_px, rtol=1e-5, atol=1e-4)
    assert np.all((out.assignment >= 0) & (out.assignment < params.n_components))


@pytest.mark.parametrize("params", [SEED_PARAMS, K3], ids=["seed-1d", "k3-2d-per-component"])
def test_map_assignment_is_the_posterior_argmax(params):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, params.dim)) * 4 + params.locs.mean(0)
    clf = make_classifier(
        params.n_components,
        params.dim,
        per_component_scale=params.per_component_scale,
        max_batch=1024,
    )
    out = clf(x, params)
    probs, _ = closed_form(x, params)
    top2 = np.sort(probs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-6  # exact ties may go either way
    assert clear.mean() > 0.99
    assert np.array_equal(out.assignment[clear], probs.argmax(1)[clear])
    # At temperature 0 the infer_discrete assignment is an argmax of the returned probabilities
    # (where two are equal in float32, either).
    assert (out.probs[np.arange(len(out.probs)), out.assignment] == out.probs.max(1)).all()


def test_seed_classes():
    clf = make_classifier(2, 1, max_batch=16)
    out = clf(np.array([0.0, 1.0, 10.0, 11.0, 12.0]), SEED_PARAMS)
    assert out.assignment.tolist() == [0, 0, 1, 1, 1]


def test_temperature_one_samples_follow_the_posterior():
    # Points near the tutorial's class boundary (~5.75), each repeated many times.
    xs = np.array([5.5, 5.7, 5.75, 5.8, 6.0])
    reps = 4000
    x = np.repeat(xs, reps)
    clf = make_classifier(2, 1, temperature=1, max_batch=4096)
    out = clf(x, SEED_PARAMS, jax.random.PRNGKey(7))
    p1, _ = closed_form(xs[:, None], SEED_PARAMS)
    observed = out.assignment.reshape(len(xs), reps).sum(1)
    expected = p1[:, 1] * reps
    chi2 = (((observed - expected) ** 2) / (expected * (1 - p1[:, 1]))).sum()
    # 5 degrees of freedom; p < 1e-4 only if the sampler is wrong.
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=len(xs))
    # And a fresh key gives different samples.
    again = clf(x, SEED_PARAMS, jax.random.PRNGKey(8))
    assert not np.array_equal(again.assignment, out.assignment)


def test_temperature_one_needs_a_key():
    clf = make_classifier(2, 1, temperature=1, max_batch=16)
    with pytest.raises(ValueError, match="explicit rng key"):
        clf(np.zeros(3), SEED_PARAMS)


def test_warmup_compiles_each_size_once_and_nothing_after():
    clf = make_classifier(2, 1, max_batch=1024)
    assert clf.sizes == (16, 64, 256, 1024)
    assert clf.warmup() == 4
    rng = np.random.default_rng(3)
    for n in [1, 2, 15, 16, 17, 63, 64, 65, 500, 1024, 1025, 3000]:
        params = MixtureParams(
            rng.dirichlet([1, 1]), rng.normal(size=(2, 1)), rng.uniform(0.5, 2, 1)
        )
        out = clf(rng.normal(size=n), params)
        assert out.assignment.shape == (n,)
        assert out.probs.shape == (n, 2)
    assert clf.compilations == 4  # new parameters and any batch size reuse the warm programs


def test_padding_does_not_change_results():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 1)) * 6 + 5
    padded = make_classifier(2, 1, sizes=(64,))
    exact = make_classifier(2, 1, sizes=(40,))
    a, b = padded(x, SEED_PARAMS), exact(x, SEED_PARAMS)
    assert np.array_equal(a.assignment, b.assignment)
    assert_allclose(a.probs, b.probs, atol=1e-7)


def test_wrongly_shaped_parameters_or_points_are_rejected():
    clf = make_classifier(2, 1, max_batch=16)
    with pytest.raises(ValueError, match="do not fit this classifier"):
        clf(np.zeros(3), K3)
    with pytest.raises(ValueError, match="points must have shape"):
        clf(np.zeros((3, 2)), SEED_PARAMS)


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(100) == (16, 64, 100)
    assert bucket_sizes(65536) == (16, 64, 256, 1024, 4096, 16384, 65536)
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing"])
def test_map_near_the_boundary_is_the_argmax_whatever_the_batch(missing):
    """4,096 points within 0.02 of the decision boundary: each assignment is an argmax of its
    own probabilities, and the same as when the point is classified alone (funsor's MAP over a
    whole batch once drifted by 1e-3 in log-odds)."""
    params = MixtureParams(
        np.array([0.4, 0.6]), np.array([[0.0, 0.0], [10.0, 4.0]]), np.array([3.0, 2.0])
    )
    boundary = 5 - 9 * np.log(0.6 / 0.4) / 10  # along x0, with x1 missing
    x = np.zeros((4096, 2))
    x[:, 0] = boundary + np.linspace(-0.02, 0.02, 4096)
    x[:, 1] = np.nan if missing else 2.0
    clf = make_classifier(2, 2, per_component_scale=False, sizes=(16, 4096))
    out = clf(x, params)
    rows = np.arange(len(x))
    assert (out.probs[rows, out.assignment] == out.probs.max(1)).all()
    assert len(np.unique(out.assignment)) == 2
    for i in np.flatnonzero(out.probs[:, 0] != out.probs[:, 1])[::256]:
        alone = clf(x[i : i + 1], params)
        assert alone.assignment[0] == out.assignment[i]
        assert_allclose(alone.probs[0], out.probs[i], rtol=1e-6)


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing"])
def test_components_far_apart_relative_to_their_spread_stay_exact(missing):
    """Two components 0.002 apart with spread 1e-3 and a third at 1e6: residuals are taken per
    component in float64, so a mixture's span costs the close pair no precision."""
    params = MixtureParams(
        np.array([0.45, 0.45, 0.1]),
        np.array([[0.0, 0.0], [0.002, 0.0], [1e6, 0.0]]),
        np.array([1e-3, 1e-3]),
    )
    x = np.array([[0.0, 0.0], [0.001, 0.0], [0.002, 0.0], [1e6 + 1e-3, 0.0]])
    if missing:
        x[:, 1] = np.nan
    out = make_classifier(3, 2, max_batch=16)(x, params)
    want, log_px = closed_form(
        x[:, :1], MixtureParams(params.weights, params.locs[:, :1], params.scale[:1])
    )
    if not missing:
        want, log_px = closed_form(x, params)
    assert_allclose(out.probs, want, atol=1e-5)
    assert_allclose(out.log_likelihood, log_px, rtol=1e-5)
    assert out.assignment[[0, 2, 3]].tolist() == [0, 1, 2]  # [1] is a tie: either
