"""The covariance dispatch (mixture.covariance_forms): one form per covariance type, each
density the Gaussian scipy computes, each fit value shaped as the model's sites."""

from __future__ import annotations

import ast
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import multivariate_normal

from mixture import fit, fit_programs
from mixture.covariance import COVARIANCES, covariance_matrices, serving_scale
from mixture.covariance_forms import FORMS, CovarianceForm, EmCounts, form_of_scale
from mixture.params import MixtureParams
from mixture.sites import global_sites, serving_to_sites
from tests.conftest import parse_source

K, D, B = 3, 4, 6


def lower_factor(rng: np.random.Generator) -> np.ndarray:
    tril = np.tril(rng.normal(0, 0.4, (D, D)))
    tril[np.arange(D), np.arange(D)] = rng.uniform(0.5, 2.0, D)
    return tril


def serving(covariance: str, rng: np.random.Generator) -> np.ndarray:
    """A random serving-form scale of the type, float64."""
    compact = {
        "tied-diag": lambda: rng.uniform(0.5, 2.0, D),
        "diag": lambda: rng.uniform(0.5, 2.0, (K, D)),
        "spherical": lambda: rng.uniform(0.5, 2.0, K),
        "tied": lambda: lower_factor(rng),
        "full": lambda: np.stack([lower_factor(rng) for _ in range(K)]),
    }[covariance]()
    return serving_scale(covariance, compact, K, D)


def scipy_log_pdf(residuals: np.ndarray, scale: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(K, B) log N(r; 0, cov_k) of each residual over its `keep` coordinates, by scipy."""
    cov = covariance_matrices(scale, K)
    out = np.empty(residuals.shape[:2])
    for k in range(K):
        for b in range(residuals.shape[1]):
            sub = keep[b]
            out[k, b] = multivariate_normal(np.zeros(sub.sum()), cov[k][np.ix_(sub, sub)]).logpdf(
                residuals[k, b, sub]
            )
    return out


def test_every_covariance_type_has_a_form():
    assert tuple(FORMS) == COVARIANCES
    assert all(isinstance(form, CovarianceForm) for form in FORMS.values())


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_form_of_a_serving_scale_has_the_same_density(covariance):
    scale = serving(covariance, np.random.default_rng(0))
    form = form_of_scale(scale)
    assert form.log_density is FORMS[covariance].log_density
    assert form.log_density_np is FORMS[covariance].log_density_np


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_log_densities_agree_with_scipy(covariance):
    rng = np.random.default_rng(COVARIANCES.index(covariance))
    scale = serving(covariance, rng)
    residuals = rng.normal(0, 1.5, (K, B, D))
    form = FORMS[covariance]
    want = scipy_log_pdf(residuals, scale, np.ones((B, D), bool))

    got_np = form.log_density_np(np.swapaxes(residuals, 0, 1), scale)  # (N, K, D) -> (N, K)
    assert_allclose(got_np.T, want, rtol=1e-12)
    got = form.log_density(jnp.asarray(residuals, jnp.float32), jnp.asarray(scale, jnp.float32))
    assert got.shape == (K, B)
    assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_marginal_log_density_agrees_with_scipy_over_the_observed_coordinates(covariance):
    rng = np.random.default_rng(10 + COVARIANCES.index(covariance))
    scale = serving(covariance, rng)
    residuals = rng.normal(0, 1.5, (K, B, D))
    observed = rng.random((B, D)) < 0.6
    observed[:, 1] = True  # every record observes something
    observed[0] = True  # and one observes everything
    want = scipy_log_pdf(residuals, scale, observed)
    got = FORMS[covariance].marginal_log_density(
        jnp.asarray(np.where(observed[None], residuals, 0.0), jnp.float32),
        jnp.asarray(observed),
        jnp.asarray(scale, jnp.float32),
    )
    assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_initial_scales_are_the_model_sites_of_each_candidate(covariance):
    c = 5
    values = FORMS[covariance].initial_scale(c, K, D, jnp.float32)
    assert {"weights", "locs", *values} == set(global_sites(covariance, K))
    # Shaped as one set of the model's site values (serving_to_sites), per candidate.
    unit = MixtureParams(np.full(K, 1 / K), np.zeros((K, D)), np.ones((K, D)))
    one = serving_to_sites(unit, covariance, 0.0)
    for name, value in values.items():
        assert value.shape == (c, *np.shape(one[name])), name
        assert value.dtype == jnp.float32
    # The tutorial's start: scale sqrt(var / 2), var 1 in standardised units.
    scales = values.get("scale", values.get("scales"))
    assert_allclose(np.asarray(scales), np.sqrt(0.5), rtol=1e-6)
    if "corr" in values:
        assert_allclose(
            np.asarray(values["corr"]), np.broadcast_to(np.eye(D), values["corr"].shape)
        )


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_em_step_updates_exactly_the_scale_sites(covariance):
    values = FORMS[covariance].initial_scale(1, K, D, jnp.float32)
    start = {name: v[0] for name, v in values.items()}
    params = {f"{name}_auto_loc": jnp.log(v) if name != "corr" else v for name, v in start.items()}
    if "corr" in start:  # the LKJ site's unconstrained vector: zeros are the identity
        shape = (*np.shape(start["corr"])[:-2], D * (D - 1) // 2)
        params["corr_auto_loc"] = jnp.zeros(shape, jnp.float32)
    params["locs_auto_loc"] = jnp.zeros((K, D), jnp.float32)
    grads = {name: jnp.zeros_like(v) for name, v in params.items()}
    counts = EmCounts(jnp.full((K,), 100.0), jnp.full((K, D), 100.0), 300.0, jnp.full((D,), 300.0))
    new, mu_step, loc_counts = FORMS[covariance].em_step(params, grads, counts, 0.0)
    assert set(new) == set(params) - {"locs_auto_loc"}
    for name, value in new.items():  # a zero gradient is a fixed point
        assert_allclose(np.asarray(value), np.asarray(params[name]), atol=1e-5)
    assert mu_step.shape == (K, D)
    assert np.shape(loc_counts) in ((K, 1), (K, D))


def _mixture_imports(module: str) -> set[str]:
    path = Path(fit.__file__).parent / f"{module.removeprefix('mixture.')}.py"
    found = set()
    for node in ast.walk(parse_source(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixture."):
            found.add(node.module or "")
    return found


def test_program_sources_cover_every_module_the_fit_programs_import():
    """The program cache's salt (mixture.fit_programs.PROGRAM_SOURCES) must change with any
    module the fit's programs are traced from, such as the covariance forms."""
    sources = set(fit_programs.PROGRAM_SOURCES)
    seen, todo = set(), list(sources)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_mixture_imports(module))
    assert "mixture.covariance_forms" in sources
    # Not traced: the cache itself (and its directory checks), and the points' validation.
    untraced = {"mixture.program_cache", "mixture.cache_dir", "mixture.points"}
    assert seen - untraced <= sources
