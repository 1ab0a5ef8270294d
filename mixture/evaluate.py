"""Scoring a mixture on data: log-likelihood per point and information criteria (numpy, float64)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from mixture.covariance import cholesky_factors, infer_covariance, n_scale_parameters
from mixture.covariance_forms import form_of_scale
from mixture.params import MixtureParams


def component_log_pdf(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log N(x | loc_k, Sigma_k) for each point and component: (N, K), any covariance layout.

    NaN coordinates are missing: a point's density is the marginal over its observed
    coordinates (the Gaussian with those rows and columns of loc and Sigma).
    """
    x = np.asarray(points, dtype=np.float64)
    observed = ~np.isnan(x)
    if observed.all():
        return _complete_log_pdf(x, params)
    out = np.empty((len(x), params.n_components))
    chol = cholesky_factors(params.scale, params.n_components)
    cov = chol @ np.swapaxes(chol, -1, -2)
    patterns, which = np.unique(observed, axis=0, return_inverse=True)
    for i, keep in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == i)
        sub_cov = cov[:, keep][:, :, keep]
        sub = MixtureParams(
            params.weights, np.asarray(params.locs)[:, keep], np.linalg.cholesky(sub_cov)
        )
        out[rows] = _complete_log_pdf(x[rows][:, keep], sub)
    return out


def _complete_log_pdf(x: np.ndarray, params: MixtureParams) -> np.ndarray:
    """component_log_pdf of complete points x (N, D): (N, K)."""
    diff = x[:, None, :] - np.asarray(params.locs, np.float64)[None]  # (N, K, D)
    scale = np.asarray(params.scale, np.float64)
    return form_of_scale(scale).log_density_np(diff, scale)


def log_likelihood(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log p(x) for each point of (N, D) under the mixture."""
    log_w = np.log(np.asarray(params.weights, np.float64))
    return logsumexp(log_w + component_log_pdf(points, params), axis=1)


def n_free_parameters(params: MixtureParams, covariance: str | None = None) -> int:
    """Free parameters as scikit-learn counts them (covariance: inferred from the layout)."""
    k, d = params.n_components, params.dim
    covariance = covariance or infer_covariance(params.scale)
    return (k - 1) + k * d + n_scale_parameters(covariance, k, d)


class Score(NamedTuple):
    log_likelihood: float  # total over the points
    mean_log_likelihood: float
    aic: float
    bic: float


def score(points: np.ndarray, params: MixtureParams, covariance: str | None = None) -> Score:
    ll = float(log_likelihood(points, params).sum())
    n, p = len(points), n_free_parameters(params, covariance)
    return Score(ll, ll / n, 2 * p - 2 * ll, p * np.log(n) - 2 * ll)
