"""The Bayesian Gaussian mixture as NumPyro programs.

`make_mixture_model` is the generative model the fit uses: the tutorial's model generalised to K
components, D dimensions and five covariance types (`mixture.covariance`), with the data
assignments enumerated in parallel (so TraceEnum_ELBO marginalises them exactly).

- Diagonal types put a LogNormal prior on each scale, as the tutorial does.
- Full and tied covariances are `diag(scales) @ corr`: per-dimension LogNormal scales times
  an `LKJCholesky` correlation factor, with a MultivariateNormal likelihood.
- Every type adds a covariance floor `reg_covar * I` (in the fit's standardised coordinates,
  i.e. relative to each column's variance) inside the model, so what is fitted is what is served.

`assignment_model` is the likelihood with the globals given, as `infer_discrete` needs for
classification: replaying fitted globals into the full model is equivalent, and passing them
as arguments lets one jitted classifier serve every model version of a layout.
`likelihood_assignment_model` is the same with the likelihood computed beforehand, in closed
form and centred per component: what serving runs (see `mixture.classify.assign`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.funsor import config_enumerate

from mixture.covariance import is_cholesky
from mixture.params import MixtureParams, Priors
from mixture.sites import global_sites, serving_to_sites, sites_to_serving

__all__ = [
    "CholeskyNormal",
    "StandardisedCholeskyNormal",
    "ZeroFilledMask",
    "assignment_model",
    "floored_tril",
    "global_sites",
    "likelihood_assignment_model",
    "likelihood_scale",
    "make_mixture_model",
    "serving_to_sites",
    "sites_to_serving",
]


def make_mixture_model(
    n_components: int, covariance: str = "tied-diag", reg_covar: float = 0.0
) -> Callable[..., None]:
    """Builds model(points (N, D), priors, mask) for a fixed K and covariance.

    mask: None, (N,) which rows count (padding does not), or, for the diagonal types, (N, D)
    which coordinates are observed: the likelihood of a row is then over its observed
    coordinates only (exact for independent dimensions), and a row with none does not count.
    Masked values must be finite (`mixture.fit_data` pads with zeros): see ZeroFilledMask.
    """
    k = n_components

    @config_enumerate
    def mixture_model(points: Any, priors: Priors, mask: Any = None) -> None:
        n, d = points.shape
        if k > 1:
            weights = numpyro.sample("weights", dist.Dirichlet(priors.concentration * jnp.ones(k)))
        scale_prior = dist.LogNormal(priors.scale_log_mean, priors.scale_log_sd).expand([d])

        def each(fn: dist.Distribution) -> dist.Distribution:
            # One component: no plate (funsor cannot contract a size-1 plate here), an event.
            return fn if k > 1 else fn.expand([1]).to_event(1)

        with numpyro.plate("components", k) if k > 1 else contextlib.nullcontext():
            locs = numpyro.sample(
                "locs",
                each(dist.Normal(priors.loc_center, priors.loc_scale).expand([d]).to_event(1)),
            )
            if covariance == "diag":
                scale = numpyro.sample("scale", each(scale_prior.to_event(1)))
            elif covariance == "spherical":
                scale = numpyro.sample(
                    "scale",
                    each(dist.LogNormal(priors.scale_log_mean.mean(), priors.scale_log_sd)),
                )
            elif covariance == "full":
                scales = numpyro.sample("scales", each(scale_prior.to_event(1)))
                corr = numpyro.sample("corr", each(dist.LKJCholesky(d, priors.lkj_concentration)))
        if covariance == "tied-diag":
            scale = numpyro.sample("scale", scale_prior.to_event(1))
        elif covariance == "tied":
            scales = numpyro.sample("scales", scale_prior.to_event(1))
            corr = numpyro.sample("corr", dist.LKJCholesky(d, priors.lkj_concentration))

        globals_ = {"scales": scales, "corr": corr} if is_cholesky(covariance) else {"scale": scale}
        spread = likelihood_scale(globals_, covariance, reg_covar, k, d)

        coords = mask if mask is not None and mask.ndim == 2 else None
        rows = mask if coords is None else coords.any(-1)
        with numpyro.plate("data", n):
            with numpyro.handlers.mask(mask=True if rows is None else rows):
                # One component has nothing to enumerate (and funsor cannot enumerate a size-1
                # site).
                assignment = (
                    numpyro.sample("assignment", dist.Categorical(weights))
                    if k > 1
                    else jnp.zeros((), jnp.int32)
                )
            obs = _component(locs, spread, assignment, covariance, coords)
            numpyro.sample("obs", obs if rows is None else ZeroFilledMask(obs, rows), obs=points)

    return mixture_model


class CholeskyNormal(dist.MultivariateNormal):
    """MultivariateNormal(loc, scale_tril) whose log density inverts the (tiny, D x D) factors
    once and multiplies, instead of a batched triangular solve per point: many times faster on
    CPU for the enumerated (K, N) batch, and the same density."""

    def log_prob(self, value: Any) -> Any:
        inv, half_log_det, d = self._inverse()
        z = jnp.einsum("...ij,...j->...i", inv, value - self.loc)
        return -0.5 * (z * z).sum(-1) - half_log_det - 0.5 * d * jnp.log(2 * jnp.pi)

    def _inverse(self) -> tuple[Any, Any, int]:
        tril = self.scale_tril
        d = tril.shape[-1]
        inv = jax.scipy.linalg.solve_triangular(
            tril, jnp.broadcast_to(jnp.eye(d, dtype=tril.dtype), tril.shape), lower=True
        )
        return inv, jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)).sum(-1), d


class StandardisedCholeskyNormal(CholeskyNormal):
    """CholeskyNormal for the fit's standardised points (N, D), with factors batched over the
    components only: z = inv @ x - inv @ loc, one matrix product of every point by every
    component's inverse factor (and one more for the gradient), where the residuals x - loc_k
    per component and point, and their gradient, went through memory (a D=8, K=4 step over
    100k points: 0.45x the time).

    In float32 the product form loses about eps |inv| |x| of z, where inv @ (x - loc) loses
    eps |inv| |x - loc|. The standardised points already carry eps |x| of rounding against the
    float64 data, which inv amplifies the same way, so against the data both forms are off by
    the same order. Points in data units (a large offset, a small spread) are not standardised:
    they take CholeskyNormal's residual form (`assignment_model`)."""

    def log_prob(self, value: Any) -> Any:
        tril = self.scale_tril
        if jnp.ndim(value) != 2 or (tril.ndim > 2 and tril.shape[-3] != 1):
            return super().log_prob(value)
        inv, half_log_det, d = self._inverse()
        # The points' axis meets a factor axis of size 1 (or none): one product serves.
        factors = inv if inv.ndim == 2 else inv[..., 0, :, :]
        z = jnp.einsum("nj,...ij->...ni", value, factors) - jnp.einsum(
            "...ij,...j->...i", inv, self.loc
        )
        return -0.5 * (z * z).sum(-1) - half_log_det - 0.5 * d * jnp.log(2 * jnp.pi)


class ZeroFilledMask(dist.MaskedDistribution):
    """`base.mask(mask)` for points whose masked values (padding rows, missing coordinates) are
    zeros already, as `mixture.fit_data` pads them: MaskedDistribution first replaces masked
    values by feasible ones, a `where` that broadcast the points against the enumerated
    components (a K x N x D copy in every step, and StandardisedCholeskyNormal's one product
    lost). The log density is the same: masked terms are 0."""

    def log_prob(self, value: Any, intermediates: Any = None) -> Any:
        if isinstance(self._mask, bool):
            return super().log_prob(value)
        return jnp.where(self._mask, self.base_dist.log_prob(value), 0.0)


def _component(
    locs: Any, scale: Any, assignment: Any, covariance: str, coords: Any = None
) -> dist.Distribution:
    """The observation distribution of the assigned component (diagonal types: over the
    coordinates `coords` marks observed, if given)."""
    if covariance == "tied":
        return StandardisedCholeskyNormal(locs[assignment], scale_tril=scale)
    if covariance == "full":
        return StandardisedCholeskyNormal(locs[assignment], scale_tril=scale[assignment])
    component_scale = scale if covariance == "tied-diag" else scale[assignment]
    normal = dist.Normal(locs[assignment], component_scale)
    return (normal if coords is None else ZeroFilledMask(normal, coords)).to_event(1)


def floored_tril(scales: Any, corr: Any, reg_covar: float) -> Any:
    """Cholesky factor of diag(s) C C^T diag(s) + reg * I (batched over leading axes)."""
    tril = scales[..., :, None] * corr
    if reg_covar == 0:
        return tril
    cov = tril @ jnp.swapaxes(tril, -1, -2)
    return jnp.linalg.cholesky(cov + reg_covar * jnp.eye(cov.shape[-1]))


def likelihood_scale(
    sites: dict[str, Any], covariance: str, reg_covar: float, n_components: int, dim: int
) -> Any:
    """The scale the model's likelihood takes, from its scale sites, the floor included (jnp,
    traceable): (D, D) tied and (K, D, D) full Cholesky factors, (D,) tied-diag, (K, D) diag
    and spherical. The model uses it, and so does the fit's closed-form ranking of candidates
    (`mixture.fit_programs`); `mixture.sites.sites_to_serving` is its numpy twin."""
    if is_cholesky(covariance):
        return floored_tril(sites["scales"], sites["corr"], reg_covar)
    scale = jnp.sqrt(sites["scale"] ** 2 + reg_covar)
    if covariance == "spherical":
        return jnp.broadcast_to(scale[:, None], (n_components, dim))
    return scale


@config_enumerate
def assignment_model(points: Any, params: MixtureParams) -> None:
    """p(assignment, x | globals): the model with its globals fixed, for infer_discrete.

    params.scale in serving form: (D,) or (K, D) diagonal, or (K, D, D) Cholesky factors.
    """
    scale = params.scale
    with numpyro.plate("data", points.shape[0]):
        assignment = numpyro.sample("assignment", dist.Categorical(params.weights))
        if scale.ndim == 3:
            obs = CholeskyNormal(params.locs[assignment], scale_tril=scale[assignment])
        else:
            component_scale = scale[assignment] if scale.ndim == 2 else scale
            obs = dist.Normal(params.locs[assignment], component_scale).to_event(1)
        numpyro.sample("obs", obs, obs=points)


@config_enumerate
def likelihood_assignment_model(log_lik: Any, weights: Any) -> None:
    """p(assignment, x | globals) with the likelihood given per component: log_lik (K, B) is
    log p(x_b | component k), computed in closed form (`mixture.classify.log_likelihoods`, over
    the observed coordinates where some are missing). What serving runs infer_discrete on."""
    n = log_lik.shape[1]
    with numpyro.plate("data", n):
        assignment = numpyro.sample("assignment", dist.Categorical(weights))
        numpyro.factor("obs", log_lik[assignment, jnp.arange(n)])
