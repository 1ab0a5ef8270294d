"""MAP fit: the tutorial's numbers, recovery of known mixtures, agreement with scikit-learn."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from numpyro import handlers
from numpyro.infer import TraceEnum_ELBO, init_to_value
from numpyro.infer.autoguide import AutoDelta
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture

from mixture.evaluate import log_likelihood
from mixture.fit import (
    DataError,
    FitConfig,
    FitPrograms,
    Standardizer,
    as_points,
    fit_map,
)
from mixture.model import make_mixture_model
from mixture.params import MixtureParams, seed_priors

SEED_DATA = [0.0, 1.0, 10.0, 11.0, 12.0]
SEED = FitConfig(priors="seed", init="random")


@pytest.fixture(scope="module")
def seed_fit():
    return fit_map(SEED_DATA, jax.random.PRNGKey(0), SEED)


def match(est_locs: np.ndarray, true_locs: np.ndarray) -> np.ndarray:
    """Order of est's components that best matches true's (mixtures are label-free)."""
    cost = ((est_locs[:, None, :] - true_locs[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return rows[np.argsort(cols)]


def test_reproduces_the_tutorial(seed_fit):
    order = np.argsort(seed_fit.params.locs[:, 0])
    assert_allclose(seed_fit.params.weights[order], [0.375, 0.625], atol=2e-3)
    assert_allclose(seed_fit.params.locs[order, 0], [0.499, 10.985], atol=2e-3)
    assert_allclose(seed_fit.params.scale, [0.651], atol=2e-3)
    assert_allclose(seed_fit.init_loss, 25.1498, atol=1e-3)
    assert seed_fit.converged
    assert seed_fit.final_loss < seed_fit.init_loss


def test_monitoring_is_recorded_per_step(seed_fit):
    assert seed_fit.losses.shape == (seed_fit.n_steps,)
    assert set(seed_fit.grad_norms) == {"weights", "locs", "scale"}
    for norms in seed_fit.grad_norms.values():
        assert norms.shape == (seed_fit.n_steps,)
        assert np.all(np.isfinite(norms))
    # At the optimum the gradients vanish compared with the start.
    assert seed_fit.grad_norms["locs"][-1] < 1e-2 * seed_fit.grad_norms["locs"][0]


def test_vectorized_candidate_losses_equal_the_tutorials_elbo():
    """Vmapped standardised initial losses equal TraceEnum_ELBO on raw data, one by one."""
    x = as_points(SEED_DATA)
    std = Standardizer(x.mean(0), x.std(0))
    prog = FitPrograms().program(dataclasses.replace(SEED, reg_covar=0.0), 1)
    priors = seed_priors(1)
    candidates = {
        "weights": jnp.full((3, 2), 0.5),
        "locs": jnp.asarray(
            std.points(np.array([[[0.0], [11.0]], [[1.0], [12.0]], [[10.0], [10.0]]]))
        ),
        "scale": jnp.full((3, 1), np.sqrt(0.5)),
    }
    z = jnp.asarray(std.points(x), jnp.float32)
    got = np.asarray(
        prog.losses(candidates, z, jax.tree.map(jnp.asarray, std.priors(priors)), jnp.ones(5, bool))
    ) + std.loss_offset(5, 2, "tied-diag")

    model = make_mixture_model(2, "tied-diag")
    data = jnp.asarray(x)
    for i, locs in enumerate(([0.0, 11.0], [1.0, 12.0], [10.0, 10.0])):
        values = {
            "weights": jnp.full(2, 0.5),
            "scale": jnp.full(1, np.sqrt(x.var() / 2)),
            "locs": jnp.asarray(locs)[:, None],
        }
        global_model = handlers.block(
            handlers.seed(model, jax.random.PRNGKey(0)),
            hide_fn=lambda s: s.get("name") not in ("weights", "scale", "locs", "components"),
        )
        guide = AutoDelta(global_model, init_loc_fn=init_to_value(values=values))
        handlers.seed(guide, jax.random.PRNGKey(0))(data, priors)
        want = TraceEnum_ELBO().loss(jax.random.PRNGKey(0), {}, model, guide, data, priors)
        assert_allclose(got[i], want, rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 75.0, 1e4])
def test_recovers_k3_in_2d_wherever_the_data_sit(offset):
    rng = np.random.default_rng(1)
    true_locs = np.array([[0.0, 0.0], [6.0, 1.0], [2.0, 7.0]]) + offset
    true_w = np.array([0.5, 0.3, 0.2])
    true_scale = np.array([[1.0, 0.7], [0.8, 1.2], [0.6, 0.9]])
    n = 4000
    z = rng.choice(3, size=n, p=true_w)
    x = true_locs[z] + true_scale[z] * rng.normal(size=(n, 2))

    config = FitConfig(n_components=3, covariance="diag")
    fit = fit_map(x, jax.random.PRNGKey(0), config)
    order = match(fit.params.locs, true_locs)
    assert_allclose(fit.params.locs[order], true_locs, atol=0.15)
    assert_allclose(fit.params.weights[order], true_w, atol=0.03)
    assert_allclose(fit.params.scale[order], true_scale, rtol=0.1)

    sk = GaussianMixture(3, covariance_type="diag", n_init=5, random_state=0).fit(x)
    sk_order = match(sk.means_, true_locs)
    spread = x.std(axis=0)
    # Agreement with scikit-learn's EM within 2% of a standard deviation.
    assert np.all(np.abs(fit.params.locs[order] - sk.means_[sk_order]) <= 0.02 * spread)
    assert np.all(
        np.abs(fit.params.scale[order] - np.sqrt(sk.covariances_[sk_order])) <= 0.02 * spread
    )
    assert_allclose(fit.params.weights[order], sk.weights_[sk_order], atol=0.01)


def test_shared_scale_1d_around_ten_thousand_matches_sklearn():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(10_000, 2.0, 3000), rng.normal(10_012, 2.0, 2000)])
    fit = fit_map(x, jax.random.PRNGKey(3), FitConfig())
    order = np.argsort(fit.params.locs[:, 0])
    sk = GaussianMixture(2, covariance_type="tied", n_init=5, random_state=0).fit(x[:, None])
    sk_order = np.argsort(sk.means_[:, 0])
    assert np.all(np.abs(fit.params.locs[order, 0] - sk.means_[sk_order, 0]) <= 0.02 * x.std())
    assert abs(fit.params.scale[0] - np.sqrt(sk.covariances_[0, 0])) <= 0.02 * x.std()
    assert_allclose(fit.params.weights[order], [0.6, 0.4], atol=0.02)


def test_warm_start_is_a_candidate(seed_fit):
    # With one random candidate the warm start (the previous optimum) must win.
    config = FitConfig(priors="seed", n_init=1)
    again = fit_map(SEED_DATA, jax.random.PRNGKey(9), config, warm_start=seed_fit.params)
    assert_allclose(again.init_loss, seed_fit.final_loss, atol=1e-3)
    assert_allclose(again.params.locs, seed_fit.params.locs, atol=2e-3)


@pytest.mark.parametrize(
    "config",
    [
        FitConfig(priors="seed", cold_em=False, max_steps=50, min_steps=50),  # Adam's cap
        FitConfig(priors="seed", em_max_steps=4, cold_em_chunk_steps=2, warm_tol=0.0),
    ],
    ids=["adam", "em"],
)
def test_step_cap_stops_an_unconverged_fit(config):
    fit = fit_map(SEED_DATA, jax.random.PRNGKey(0), config)
    assert fit.n_steps == (50 if not config.cold_em else 4)
    assert fit.losses.shape == (fit.n_steps,)
    assert not fit.converged


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1.0], "cannot fit 2 components"),
        ([0.0, 1.0, float("nan"), 3.0], "1 point(s) with no observed value"),
        ([0.0, 1.0, float("inf"), 3.0], "1 point(s) with infinite coordinates"),
        ([5.0, 5.0, 5.0, 5.0], "zero variance"),
        ([[[1.0]], [[2.0]], [[3.0]]], "must be (N,) or (N, D)"),
        (["a", "b", "c"], "must be numbers"),
    ],
)
def test_bad_data_is_a_clear_error(data, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_map(data, jax.random.PRNGKey(0), SEED)


@pytest.mark.parametrize("explore", [False, True])
def test_exploring_refit_leaves_a_poor_local_optimum(explore):
    """A current model with two components on one cluster and one across the other two scores
    best of every random start; refitted from it alone, it stays there. An exploring refit
    also optimises the best random starts and reaches the optimum a cold fit finds."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, 2000), rng.normal(10, 1, 2000), rng.normal(20, 1, 2000)][:, None]
    config = FitConfig(n_components=3, covariance="diag")
    trap = MixtureParams(
        np.array([1 / 6, 1 / 6, 2 / 3]),
        np.array([[-0.8], [0.8], [15.0]]),
        np.array([[0.6], [0.6], [5.1]]),
    )
    result = fit_map(x, jax.random.PRNGKey(1), config, warm_start=trap, explore=explore)
    refit = log_likelihood(x, result.params).mean()
    cold = log_likelihood(x, fit_map(x, jax.random.PRNGKey(2), config).params).mean()
    if explore:
        assert refit >= cold - 0.01
        assert_allclose(np.sort(result.params.locs[:, 0]), [0, 10, 20], atol=0.1)
    else:  # what the trainer does between explorations: the nearest optimum only
        assert refit < cold - 0.5


def test_a_warm_start_of_another_shape_is_ignored():
    """A model of another K (or D) cannot start the fit: it is fitted as if none were given."""
    x = np.r_[
        np.random.default_rng(0).normal(0, 1, 200), np.random.default_rng(1).normal(8, 1, 200)
    ]
    config = FitConfig(n_components=2, covariance="diag")
    other = MixtureParams(np.full(3, 1 / 3), np.array([[0.0], [4.0], [8.0]]), np.ones((3, 1)))
    with_other = fit_map(x, jax.random.PRNGKey(0), config, warm_start=other)
    without = fit_map(x, jax.random.PRNGKey(0), config)
    assert_allclose(with_other.params.locs, without.params.locs, rtol=1e-6)
