"""Scoring a mixture on data: log-likelihood per point and information criteria (numpy, float64)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

from mixture.covariance import infer_covariance, n_scale_parameters
from mixture.params import MixtureParams


def component_log_pdf(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log N(x | loc_k, Sigma_k) for each point and component: (N, K), any covariance layout."""
    x = np.asarray(points, dtype=np.float64)
    locs = np.asarray(params.locs, np.float64)
    k, d = locs.shape
    diff = x[:, None, :] - locs[None]  # (N, K, D)
    scale = np.asarray(params.scale, np.float64)
    if scale.ndim == 3:
        z = np.stack(
            [solve_triangular(scale[j], diff[:, j].T, lower=True).T for j in range(k)], axis=1
        )
        log_det = np.log(np.diagonal(scale, axis1=-2, axis2=-1)).sum(-1)  # (K,)
    else:
        scale = np.broadcast_to(scale, (k, d))
        z = diff / scale[None]
        log_det = np.log(scale).sum(-1)
    return -0.5 * (z**2).sum(-1) - log_det[None] - 0.5 * d * np.log(2 * np.pi)


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
