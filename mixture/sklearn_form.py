"""A mixture in scikit-learn's form and back: `GaussianMixture`'s arrays from the serving form
(`MixtureParams`) and the serving form from them, for every covariance type.

scikit-learn keeps covariances (`covariances_`) and the Cholesky factors of the precisions
(`precisions_cholesky_`); the serving form keeps standard deviations or the lower Cholesky factors
of the covariances (`mixture.covariance`). Pure numpy in float64: scikit-learn itself is needed
only to build a `GaussianMixture` object (`to_gaussian_mixture`, an optional dependency).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mixture.covariance import check_covariance
from mixture.params import MixtureParams

#: scikit-learn's covariance types; the project's `tied-diag` (one diagonal shared by every
#: component) has no scikit-learn type and goes out as `diag` with equal rows.
SKLEARN_COVARIANCES = ("full", "tied", "diag", "spherical")


class SklearnArrays(NamedTuple):
    """A fitted `GaussianMixture`'s arrays, shaped as scikit-learn shapes them for its type."""

    covariance_type: str
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    #: full (K, D, D), tied (D, D), diag (K, D), spherical (K,); tied-diag (D,) (ours only).
    covariances: np.ndarray
    precisions_cholesky: np.ndarray  # as covariances
    precisions: np.ndarray  # as covariances


def to_sklearn_arrays(params: MixtureParams, covariance: str) -> SklearnArrays:
    """scikit-learn's arrays of a serving-form mixture of this covariance type."""
    covariance = check_covariance(covariance)
    weights = np.asarray(params.weights, np.float64)
    means = np.asarray(params.locs, np.float64)
    scale = np.asarray(params.scale, np.float64)
    if covariance in ("full", "tied"):
        # Recomputed from the covariances: the factors' signs and rounding then match
        # scikit-learn's own (a lower factor with a positive diagonal).
        covs = scale @ np.swapaxes(scale, -1, -2)
        if covariance == "tied":
            covs = covs[0]
        prec_chol = _precision_cholesky(covs)
        precisions = prec_chol @ np.swapaxes(prec_chol, -1, -2)
        return SklearnArrays(covariance, weights, means, covs, prec_chol, precisions)
    variances = np.square(scale[:, 0] if covariance == "spherical" else scale)
    return SklearnArrays(
        covariance, weights, means, variances, 1.0 / np.sqrt(variances), 1.0 / variances
    )


def from_sklearn_arrays(
    covariance_type: str, weights: Any, means: Any, covariances: Any
) -> tuple[MixtureParams, str]:
    """The serving form (and its covariance type) of scikit-learn's weights, means and
    covariances; ValueError (one line) for shapes that disagree or covariances that are not
    positive definite."""
    covariance = check_covariance(covariance_type)
    w = np.asarray(weights, np.float64)
    m = np.asarray(means, np.float64)
    c = np.asarray(covariances, np.float64)
    if w.ndim != 1 or m.ndim != 2 or m.shape[0] != w.shape[0]:
        raise ValueError(f"weights (K,) and means (K, D) disagree: {w.shape} and {m.shape}")
    k, d = m.shape
    expect = {
        "full": (k, d, d),
        "tied": (d, d),
        "diag": (k, d),
        "spherical": (k,),
        "tied-diag": (d,),
    }[covariance]
    if c.shape != expect:
        raise ValueError(f"{covariance} covariances must have shape {expect}, got {c.shape}")
    if covariance in ("full", "tied"):
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            raise ValueError(f"{covariance} covariances are not positive definite") from None
        scale = np.broadcast_to(chol, (k, d, d)).copy()
    else:
        if not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise ValueError(f"{covariance} variances must be finite and positive")
        sd = np.sqrt(c)
        scale = np.repeat(sd[:, None], d, axis=1) if covariance == "spherical" else sd
    return MixtureParams(w, m, scale), covariance


def to_gaussian_mixture(params: MixtureParams, covariance: str, **kwargs: Any) -> Any:
    """A fitted `sklearn.mixture.GaussianMixture` with these parameters (`tied-diag` goes out as
    `diag`): it predicts, scores and samples as this mixture does. kwargs: its constructor's
    other parameters (random_state, reg_covar, ...)."""
    from sklearn.mixture import GaussianMixture

    arrays = to_sklearn_arrays(params, covariance)
    covariance_type = arrays.covariance_type
    covs, prec_chol, prec = arrays.covariances, arrays.precisions_cholesky, arrays.precisions
    if covariance_type == "tied-diag":
        k = params.n_components
        covariance_type = "diag"
        covs, prec_chol, prec = (np.tile(a, (k, 1)) for a in (covs, prec_chol, prec))
    gm = GaussianMixture(params.n_components, covariance_type=covariance_type, **kwargs)
    gm.weights_ = arrays.weights.copy()
    gm.means_ = arrays.means.copy()
    gm.covariances_ = covs
    gm.precisions_cholesky_ = prec_chol
    gm.precisions_ = prec
    gm.converged_ = True
    gm.n_iter_ = 0
    gm.lower_bound_ = -np.inf
    gm.n_features_in_ = params.dim
    return gm


def from_gaussian_mixture(gm: Any) -> tuple[MixtureParams, str]:
    """The serving form (and covariance type) of a fitted `sklearn.mixture.GaussianMixture`."""
    for name in ("weights_", "means_", "covariances_"):
        if not hasattr(gm, name):
            raise ValueError(f"the GaussianMixture is not fitted (no {name})")
    return from_sklearn_arrays(gm.covariance_type, gm.weights_, gm.means_, gm.covariances_)


def _precision_cholesky(covs: np.ndarray) -> np.ndarray:
    """scikit-learn's precisions_cholesky_ of (..., D, D) covariances: the upper factor P with
    P P^T = inv(covariance), i.e. the transposed inverse of the covariance's lower factor."""
    chol = np.linalg.cholesky(covs)
    eye = np.broadcast_to(np.eye(covs.shape[-1]), covs.shape)
    return np.swapaxes(np.linalg.solve(chol, eye), -1, -2)
