"""The Bayesian Gaussian mixture as NumPyro programs.

`mixture_model` is the generative model the fit uses: the tutorial's model generalised to K
components, D independent dimensions and a shared or per-component scale, with the data
assignments enumerated in parallel (so TraceEnum_ELBO marginalises them exactly).

`assignment_model` is the same likelihood with the globals given, as `infer_discrete` needs for
classification: replaying fitted globals into the full model is equivalent, and passing them
as arguments lets one jitted classifier serve every model version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.funsor import config_enumerate

from mixture.params import MixtureParams, Priors

#: Sample-site names of the globals; the AutoDelta guide learns exactly these.
GLOBAL_SITES = ("weights", "scale", "locs")


def make_mixture_model(n_components: int, per_component_scale: bool) -> Callable[..., None]:
    """Builds model(points (N, D), priors, mask (N,) or None) for a fixed K and scale layout."""

    @config_enumerate
    def mixture_model(points: Any, priors: Priors, mask: Any = None) -> None:
        n, d = points.shape
        weights = numpyro.sample(
            "weights", dist.Dirichlet(priors.concentration * jnp.ones(n_components))
        )
        scale_prior = dist.LogNormal(priors.scale_log_mean, priors.scale_log_sd).expand([d])
        with numpyro.plate("components", n_components):
            locs = numpyro.sample(
                "locs", dist.Normal(priors.loc_center, priors.loc_scale).expand([d]).to_event(1)
            )
            if per_component_scale:
                scale = numpyro.sample("scale", scale_prior.to_event(1))
        if not per_component_scale:
            scale = numpyro.sample("scale", scale_prior.to_event(1))

        with numpyro.plate("data", n), numpyro.handlers.mask(mask=True if mask is None else mask):
            assignment = numpyro.sample("assignment", dist.Categorical(weights))
            component_scale = scale[assignment] if per_component_scale else scale
            numpyro.sample(
                "obs", dist.Normal(locs[assignment], component_scale).to_event(1), obs=points
            )

    return mixture_model


@config_enumerate
def assignment_model(points: Any, params: MixtureParams) -> None:
    """p(assignment, x | globals): the model with its globals fixed, for infer_discrete."""
    scale = params.scale
    with numpyro.plate("data", points.shape[0]):
        assignment = numpyro.sample("assignment", dist.Categorical(params.weights))
        component_scale = scale[assignment] if scale.ndim == 2 else scale
        numpyro.sample(
            "obs", dist.Normal(params.locs[assignment], component_scale).to_event(1), obs=points
        )
