"""Scoring a mixture on data: log-likelihood per point and information criteria (numpy, float64)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from mixture.params import MixtureParams


def log_likelihood(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """log p(x) for each point of (N, D) under the mixture."""
    x = np.asarray(points, dtype=np.float64)
    locs = np.asarray(params.locs, np.float64)
    scale = np.asarray(params.scale, np.float64)
    scale = scale if scale.ndim == 2 else scale[None, :]
    z = (x[:, None, :] - locs[None]) / scale[None]
    log_pdf = -0.5 * z**2 - np.log(scale)[None] - 0.5 * np.log(2 * np.pi)
    return logsumexp(np.log(np.asarray(params.weights, np.float64)) + log_pdf.sum(-1), axis=1)


def n_free_parameters(params: MixtureParams) -> int:
    k, d = params.n_components, params.dim
    return (k - 1) + k * d + int(np.size(params.scale))


class Score(NamedTuple):
    log_likelihood: float  # total over the points
    mean_log_likelihood: float
    aic: float
    bic: float


def score(points: np.ndarray, params: MixtureParams) -> Score:
    ll = float(log_likelihood(points, params).sum())
    n, p = len(points), n_free_parameters(params)
    return Score(ll, ll / n, 2 * p - 2 * ll, p * np.log(n) - 2 * ll)
