"""The full posterior over the globals by collapsed NUTS (the tutorial's MCMC section).

NUTS runs on the model with the assignments marginalised (enumerated), in the same standardised
coordinates as the MAP fit, and the samples are mapped back to data units. Large windows are
subsampled: the posterior summary is a diagnostic beside the MAP fit, not what is served.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

from mixture.covariance import DEFAULT_REG_COVAR, check_covariance
from mixture.fit_data import Standardizer, as_points, fit_covariance
from mixture.model import make_mixture_model
from mixture.params import Priors, data_priors


class Posterior(NamedTuple):
    samples: dict[str, np.ndarray]  # data units: weights (S, K), locs (S, K, D), scale (S, ...)
    summary: dict[str, dict[str, Any]]  # per site: mean, std, median, 5.0%, 95.0%, n_eff, r_hat
    divergences: int
    n_points: int


def posterior_nuts(
    data: Any,
    key: Any,
    n_components: int,
    covariance: str = "tied-diag",
    priors: Priors | None = None,
    num_warmup: int = 200,
    num_samples: int = 500,
    max_points: int = 5000,
    reg_covar: float = DEFAULT_REG_COVAR,
) -> Posterior:
    """Samples p(weights, locs, scale | data) with NUTS; key is a jax.random key."""
    x = as_points(data, n_components)
    x = as_points(x[~np.isnan(x).any(axis=1)], n_components)  # complete points only
    sub_key, mcmc_key = jax.random.split(key)
    if len(x) > max_points:
        x = x[np.asarray(jax.random.choice(sub_key, len(x), (max_points,), replace=False))]
    priors = priors if priors is not None else data_priors(x)
    covariance = fit_covariance(check_covariance(covariance), x.shape[1])
    std = Standardizer.of(x, covariance)
    points = jnp.asarray(std.points(x), jnp.float32)
    priors_z = Priors(*(jnp.asarray(v, jnp.float32) for v in std.priors(priors)))
    model = make_mixture_model(n_components, covariance, reg_covar)
    mcmc = MCMC(NUTS(model), num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
    mcmc.run(mcmc_key, points, priors_z, None, extra_fields=("diverging",))
    z = {k: np.asarray(v, np.float64) for k, v in mcmc.get_samples().items()}
    samples = {"weights": z["weights"], "locs": std.mean + std.std * z["locs"]}
    if "scale" in z:
        samples["scale"] = (std.std[0] if covariance == "spherical" else std.std) * z["scale"]
    else:  # full and tied: per-dimension scales (data units) and the correlation factor
        samples["scales"] = std.std * z["scales"]
        samples["corr"] = z["corr"]
    stats = summary(samples, group_by_chain=False)
    return Posterior(
        samples,
        {site: {k: np.asarray(v).tolist() for k, v in s.items()} for site, s in stats.items()},
        int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        len(x),
    )
