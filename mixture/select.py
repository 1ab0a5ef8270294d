"""Choosing the number of components by BIC (`--components auto`, `GMM_COMPONENTS=auto`).

Each K in 1..max_components is fitted as `fit_map` fits it and scored by BIC on the same points
(free parameters counted as scikit-learn counts them, so the choice is comparable with
`GaussianMixture.bic`); the lowest BIC wins. Each K compiles its own programs once per process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from mixture.evaluate import score
from mixture.fit import DataError, FitConfig, FitResult, as_points, fit_map
from mixture.params import MixtureParams

DEFAULT_MAX_COMPONENTS = 8


def parse_components(text: str) -> int | None:
    """K from "3", or None from "auto"; ValueError otherwise (one-line reason)."""
    text = text.strip()
    if text == "auto":
        return None
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise ValueError(f"must be an integer >= 1 or auto, got {text!r}")
    return int(text)


class Selection(NamedTuple):
    """The fit of the chosen K, and every K's BIC (inf where the fit failed)."""

    result: FitResult
    n_components: int
    bics: dict[int, float]


def fit_auto(
    data: Any,
    key: Any,
    config: FitConfig = FitConfig(),  # noqa: B008 (frozen, never mutated)
    max_components: int = DEFAULT_MAX_COMPONENTS,
    *,
    warm_start: MixtureParams | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    explore: bool = False,
) -> Selection:
    """Fits K = 1..max_components (config.n_components is ignored) and keeps the lowest BIC.

    key: a jax.random key; K's fit uses fold_in(key, K), so each K's fit is the same as a fixed-K
        fit with that key.
    warm_start: the current model, used as a warm start for the fit with its own K.
    progress: called as progress(K, step, loss).
    explore: as for fit_map, for the fit the warm start takes part in.
    """
    if max_components < 1:
        raise ValueError(f"max_components must be >= 1, got {max_components}")
    x = as_points(data)
    bics: dict[int, float] = {}
    best: tuple[float, int, FitResult] | None = None
    for k in range(1, min(max_components, len(x)) + 1):
        cfg = dataclasses.replace(config, n_components=k)
        warm = warm_start if warm_start is not None and warm_start.n_components == k else None
        report = None if progress is None else (lambda s, v, k=k: progress(k, s, v))
        try:
            result = fit_map(
                x,
                jax.random.fold_in(key, k),
                cfg,
                warm_start=warm,
                progress=report,
                explore=explore,
            )
        except DataError:
            bics[k] = float("inf")
            continue
        finite = all(np.all(np.isfinite(np.asarray(a))) for a in result.params)
        bic = score(x, result.params, cfg.covariance).bic if finite else float("inf")
        bics[k] = float(bic) if np.isfinite(bic) else float("inf")
        if best is None or bics[k] < best[0]:
            best = (bics[k], k, result)
    if best is None or not np.isfinite(best[0]):
        raise DataError("no number of components gave a finite fit", "not_finite")
    return Selection(best[2], best[1], bics)
