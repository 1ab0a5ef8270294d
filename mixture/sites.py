"""The fit's sample sites and the serving form of the parameters, converted both ways.

Plain numpy (no NumPyro): the fit converts its results with these without building the model,
so a process that loads its programs from the program cache never imports NumPyro for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixture.covariance import is_cholesky
from mixture.params import MixtureParams


def global_sites(covariance: str, n_components: int = 2) -> tuple[str, ...]:
    """Sample-site names of the globals of a covariance type; AutoDelta learns exactly these.
    (One component has no weights: its weight is 1.)"""
    weights = ("weights",) if n_components > 1 else ()
    if is_cholesky(covariance):
        return (*weights, "locs", "scales", "corr")
    return (*weights, "locs", "scale")


def sites_to_serving(
    sites: dict[str, Any], covariance: str, reg_covar: float, n_components: int
) -> MixtureParams:
    """Fitted site values (numpy, fit coordinates) -> serving-form parameters, floor included."""
    locs = np.asarray(sites["locs"], np.float64)
    weights = np.asarray(sites.get("weights", np.ones(len(locs))), np.float64)
    k, d = locs.shape
    if is_cholesky(covariance):
        scales = np.asarray(sites["scales"], np.float64)
        corr = np.asarray(sites["corr"], np.float64)
        tril = scales[..., :, None] * corr
        cov = tril @ np.swapaxes(tril, -1, -2) + reg_covar * np.eye(d)
        chol = np.linalg.cholesky(cov)
        scale = np.broadcast_to(chol, (k, d, d)).copy() if covariance == "tied" else chol
    else:
        scale = np.sqrt(np.asarray(sites["scale"], np.float64) ** 2 + reg_covar)
        if covariance == "spherical":
            scale = np.repeat(scale[:, None], d, axis=1)
    return MixtureParams(weights / weights.sum(), locs, scale)


def serving_to_sites(params: MixtureParams, covariance: str, reg_covar: float) -> dict[str, Any]:
    """Serving-form parameters (fit coordinates) -> site values, the floor taken back out
    (clipped so a warm start is always inside the support)."""
    weights = np.asarray(params.weights, np.float64)
    locs = np.asarray(params.locs, np.float64)
    scale = np.asarray(params.scale, np.float64)
    sites: dict[str, Any] = {"weights": weights, "locs": locs}
    if is_cholesky(covariance):
        d = locs.shape[1]
        chol = (
            scale
            if scale.ndim == 3
            else np.stack([np.diag(r) for r in np.broadcast_to(scale, locs.shape)])
        )
        cov = chol @ np.swapaxes(chol, -1, -2) - reg_covar * np.eye(d)
        # Taking the floor off can leave a component pinned at the floor indefinite: clip its
        # eigenvalues back into the positive definite cone.
        w, v = np.linalg.eigh(cov)
        w = np.maximum(w, 1e-9 * np.abs(w).max(axis=-1, keepdims=True) + 1e-12)
        cov = (v * w[..., None, :]) @ np.swapaxes(v, -1, -2)
        scales = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
        corr_m = cov / (scales[..., :, None] * scales[..., None, :])
        corr_m = 0.999 * corr_m + 0.001 * np.eye(d)  # strictly inside the LKJ support
        corr_m[..., np.arange(d), np.arange(d)] = 1.0
        corr = np.linalg.cholesky(corr_m)
        if covariance == "tied":
            scales, corr = scales[0], corr[0]
        sites.update(scales=scales, corr=corr)
    else:
        if scale.ndim == 3:
            scale = np.sqrt(np.diagonal(scale @ np.swapaxes(scale, -1, -2), axis1=-2, axis2=-1))
        if covariance == "spherical":
            scale = np.broadcast_to(scale, locs.shape).mean(axis=1)
        elif covariance == "tied-diag" and scale.ndim == 2:
            scale = scale.mean(axis=0)
        elif covariance == "diag" and scale.ndim == 1:
            scale = np.broadcast_to(scale, locs.shape)
        sites["scale"] = np.sqrt(np.clip(scale**2 - reg_covar, 1e-12, None))
    return sites
