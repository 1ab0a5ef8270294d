"""Covariance types, named as scikit-learn names them, plus the tutorial's shared diagonal scale.

- `tied-diag`: one diagonal scale shared by all components (the tutorial's model).
  Compact: `scale` (D,). Serving: `scale` (D,).
- `diag`: a diagonal scale per component. Compact and serving: `scale` (K, D).
- `spherical`: one scale per component, the same in every dimension. Compact: `scale` (K,).
  Serving: `scale` (K, D).
- `tied`: one full covariance shared by all. Compact: `scale_tril` (D, D), its lower Cholesky
  factor. Serving: `scale` (K, D, D).
- `full`: a full covariance per component. Compact: `scale_tril` (K, D, D). Serving: the same.

The serving form is what jitted code takes (`MixtureParams.scale`): a diagonal scale, (D,) or
(K, D), or one lower Cholesky factor per component, (K, D, D), so the classifier needs only three
layouts. The compact form is what the params topic carries (`gmm-params/2`). What each type
computes (initial candidates, densities, EM steps) is its form in `mixture.covariance_forms`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Covariance = Literal["tied-diag", "diag", "spherical", "tied", "full"]
COVARIANCES: tuple[str, ...] = ("tied-diag", "diag", "spherical", "tied", "full")
#: Older names, still accepted: the shared scale and `--per-component-scale`.
ALIASES = {"shared": "tied-diag", "per-component": "diag"}

#: Default covariance floor, relative to each column's variance (scikit-learn's reg_covar is the
#: same number, absolute): it keeps a component on repeated values from collapsing to zero spread.
DEFAULT_REG_COVAR = 1e-6


#: Largest condition number of a Cholesky correlation factor served (its square is the
#: correlation matrix's): float32 keeps about 7 digits, of which the solve then loses 4.
MAX_CORRELATION_CONDITION = 1e4


def check_covariance(name: str) -> str:
    """The canonical name of a covariance type; ValueError naming the choices otherwise."""
    name = ALIASES.get(name, name)
    if name not in COVARIANCES:
        raise ValueError(
            f"unknown covariance type {name!r}; choose one of {', '.join(COVARIANCES)}"
        )
    return name


def is_cholesky(covariance: str) -> bool:
    """Served as Cholesky factors (full covariances) rather than diagonal scales."""
    return covariance in ("tied", "full")


def infer_covariance(scale: Any) -> str:
    """The covariance type a serving-form scale most plainly is (for `gmm-params/1` records)."""
    return {1: "tied-diag", 2: "diag", 3: "full"}[len(np.shape(scale))]


def serving_scale(covariance: str, compact: np.ndarray, k: int, d: int) -> np.ndarray:
    """The serving form of a compact scale (see the module's table); shapes are not checked."""
    if covariance == "spherical":
        return np.repeat(np.reshape(compact, (k, 1)), d, axis=1)
    if covariance == "tied":
        return np.broadcast_to(compact, (k, d, d)).copy()
    return np.asarray(compact)


def compact_scale(covariance: str, scale: np.ndarray) -> np.ndarray:
    """The compact form of a serving-form scale: one value per free parameter block."""
    if covariance == "spherical":
        return scale[:, 0]
    if covariance == "tied":
        return scale[0]
    return scale


def covariance_matrices(scale: Any, k: int) -> np.ndarray:
    """(K, D, D) covariance matrices of a serving-form scale, in float64."""
    s = np.asarray(scale, np.float64)
    if s.ndim == 3:
        return s @ np.swapaxes(s, -1, -2)
    s = np.broadcast_to(s, (k, s.shape[-1]))
    return np.stack([np.diag(row**2) for row in s])


def cholesky_factors(scale: Any, k: int) -> np.ndarray:
    """(K, D, D) lower Cholesky factors of a serving-form scale, in float64."""
    s = np.asarray(scale, np.float64)
    if s.ndim == 3:
        return s
    s = np.broadcast_to(s, (k, s.shape[-1]))
    return np.stack([np.diag(row) for row in s])


def n_scale_parameters(covariance: str, k: int, d: int) -> int:
    """Free parameters of the covariances (for BIC), as scikit-learn counts them."""
    tri = d * (d + 1) // 2
    return {"tied-diag": d, "diag": k * d, "spherical": k, "tied": tri, "full": k * tri}[covariance]


def check_serving_scale(covariance: str, scale: np.ndarray, k: int, d: int) -> str | None:
    """Why a serving-form scale cannot be served for this type (None: it can)."""
    expect = {
        "tied-diag": (d,),
        "diag": (k, d),
        "spherical": (k, d),
        "tied": (k, d, d),
        "full": (k, d, d),
    }[covariance]
    if scale.shape != expect:
        return f"{covariance} scale must have shape {expect}, got {scale.shape}"
    if not np.all(np.isfinite(scale)):
        return "scale must be finite"
    if scale.ndim < 3:
        if np.any(scale <= 0):
            return "scale must be finite and positive"
        if covariance == "spherical" and np.any(scale != scale[:, :1]):
            return "a spherical scale must be the same in every dimension"
        return None
    if np.any(np.triu(scale, 1) != 0):
        return "scale_tril must be lower triangular"
    diag = np.diagonal(scale, axis1=-2, axis2=-1)
    if np.any(diag <= 0):
        return "scale_tril must have a positive diagonal (covariance positive definite)"
    # Served in float32: the correlation factor diag(1/sd) L (unit-free, unlike L itself) must
    # be conditioned well enough that its float32 solve keeps digits.
    sd = np.sqrt(np.einsum("kij,kij->ki", scale, scale))
    corr = scale / sd[..., :, None]
    singular = np.linalg.svd(corr, compute_uv=False)
    if np.any(singular[..., 0] > MAX_CORRELATION_CONDITION * singular[..., -1]):
        return (
            "covariance is too ill-conditioned to serve (correlation factor condition > "
            f"{MAX_CORRELATION_CONDITION:g}, i.e. correlations within about 1e-8 of +-1)"
        )
    if covariance == "tied" and np.any(scale != scale[:1]):
        return "a tied covariance must be the same for every component"
    return None
