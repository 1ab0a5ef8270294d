"""The serving classifier: jitted `infer_discrete` over padded micro-batches.

`make_classifier` builds it once per (K, D, scale layout, temperature); the layouts are shared or
per-component diagonal scales and per-component Cholesky factors, which serve every covariance
type (`mixture.covariance`). Parameters are jit *arguments*, so a new model version never
recompiles; batches are padded up to one of a few fixed sizes (by default chosen per backend,
`default_sizes`), so any batch up to `max_batch` reuses one of at most len(sizes) programs, all
of which `warmup()` compiles up front. Each trace of the program bumps `compilations`, which
tests and the worker's metrics read.

Each component's likelihood log p(x | k) is computed once, in closed form, from residuals
x - loc_k taken in float64 on the host (exact at any offset and any distance between components),
over the observed coordinates when some are missing. From it come the membership
probabilities, log p(x), and the assignment: `infer_discrete` on the mixture with that
likelihood as a factor, so the MAP assignment is an argmax of the returned probabilities.
The rest is float32: a point so far from every component that its squared standardised
distance overflows (about 1e19 standard deviations) gets non-finite results, which the worker
dead-letters as `not_classifiable`.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.contrib.funsor import infer_discrete

from mixture.covariance_forms import form_of_scale
from mixture.model import likelihood_assignment_model
from mixture.params import MixtureParams


class Prepared(NamedTuple):
    """Parameters ready to serve: weights and scales as float32 on the device, locations kept in
    float64 on the host.

    Points are served as residuals x - loc_k, one per component, computed in float64 on the host
    before the cast to float32: where the data sit (an offset of 1e12, epoch seconds) or how far
    apart the components are (two a spread of 1e-3 apart, a third at 1e6) then costs no
    precision. A single shift (the mixture's mean) does not suffice: components far from it would
    sit where a float32 step is wider than their spread.
    """

    device: MixtureParams  # float32 device arrays; locs unused (zeros)
    locs: np.ndarray  # (K, D) float64


#: Largest chunk of rows with missing coordinates classified at once (see Classifier).
MISSING_CHUNK = 256

#: The scale layouts a classifier is compiled for (see `MixtureParams.layout`).
LAYOUTS = ("shared", "diagonal", "cholesky")


class Classification(NamedTuple):
    """Per point: the assignment, p(component | x) for each component, and log p(x)."""

    assignment: np.ndarray  # (B,) int32
    probs: np.ndarray  # (B, K)
    log_likelihood: np.ndarray  # (B,)

    def finite(self) -> np.ndarray:
        """(B,) bool: which points have finite results. A point far from every component can
        overflow the float32 arithmetic; the worker dead-letters it (`not_classifiable`)."""
        return np.isfinite(self.log_likelihood) & np.isfinite(self.probs).all(axis=1)


def bucket_sizes(max_batch: int, smallest: int = 16, factor: int = 4) -> tuple[int, ...]:
    """Padding sizes smallest, smallest*factor, ... capped by max_batch (always included)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes, size = [], min(smallest, max_batch)
    while size < max_batch:
        sizes.append(size)
        size *= factor
    sizes.append(max_batch)
    return tuple(sizes)


#: The smallest padding size on a CPU and on an accelerator (GPU, TPU). On a CPU a program's
#: time grows with its rows, so small batches get small programs (16, 64, 256, ...); on an
#: accelerator a call of thousands of rows should cost little more than one of a few (launch and
#: transfer dominate; bench/device measures it), so fewer, larger programs are compiled.
SMALLEST_PADDED_CPU = 16
SMALLEST_PADDED_ACCELERATOR = 256


def default_sizes(max_batch: int, backend: str | None = None) -> tuple[int, ...]:
    """The padding sizes for `backend` (default: JAX's default backend): `bucket_sizes` from
    SMALLEST_PADDED_CPU on a CPU, from SMALLEST_PADDED_ACCELERATOR elsewhere."""
    backend = backend or jax.default_backend()
    smallest = SMALLEST_PADDED_CPU if backend == "cpu" else SMALLEST_PADDED_ACCELERATOR
    return bucket_sizes(max_batch, smallest)


def log_likelihoods(residuals: Any, scale: Any) -> Any:
    """log N(x; loc_k, cov_k) per component, (K, B), from residuals x - loc_k (K, B, D) and the
    serving scale: (D,) or (K, D) diagonal, or (K, D, D) Cholesky factors."""
    return form_of_scale(scale).log_density(residuals, scale)


def posterior(residuals: Any, params: MixtureParams) -> tuple[Any, Any, Any]:
    """Closed-form p(component | x) and log p(x) from residuals x - loc_k (K, B, D): returns
    (probs (K, B), log_px (B,), log p(x | component) (K, B)).

    Component-major, so the reductions over K run elementwise across the batch (several times
    faster on CPU than a (B, K) layout for small K); callers transpose on the host for free.
    """
    log_lik = log_likelihoods(residuals, params.scale)
    probs, log_px = _normalised(jnp.log(params.weights)[:, None] + log_lik)
    return probs, log_px, log_lik


def _normalised(log_joint: Any) -> tuple[Any, Any]:
    """(p(component | x), log p(x)) from log p(component, x), (K, B), stably."""
    top = log_joint.max(0)
    unnorm = jnp.exp(log_joint - top)
    total = unnorm.sum(0)
    return unnorm / total, top + jnp.log(total)


class Classifier:
    """A jitted mixture classifier for one model shape and temperature. Thread-safe to call."""

    def __init__(
        self,
        n_components: int,
        dim: int,
        layout: str = "shared",
        temperature: int = 0,
        max_batch: int = 4096,
        sizes: tuple[int, ...] | None = None,
    ) -> None:
        if temperature not in (0, 1):
            raise ValueError(
                f"temperature must be 0 (MAP) or 1 (posterior sample), got {temperature}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.n_components = n_components
        self.dim = dim
        self.layout = layout
        self.temperature = temperature
        self.sizes = tuple(sorted(sizes)) if sizes else default_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self._compilations = 0
        self._lock = threading.Lock()
        self._program = jax.jit(self._classify_padded)
        self._program_missing = jax.jit(self._classify_missing)
        #: Temperature 0 reads no key; it gets these placeholders (one program per size).
        #: Padding sizes of the missing-values program: its per-record factors take
        #: K x B x D x D memory, so its chunks stay small.
        self.missing_sizes = tuple(
            sorted(
                {size for size in self.sizes if size < MISSING_CHUNK}
                | {min(MISSING_CHUNK, self.max_batch)}
            )
        )
        self._no_keys = {
            size: np.zeros((size, 2), np.uint32) for size in (*self.sizes, *self.missing_sizes)
        }

    @property
    def compilations(self) -> int:
        """How many programs have been traced and compiled so far."""
        return self._compilations

    def _classify_padded(self, residuals: Any, params: MixtureParams, keys: Any) -> Any:
        # Runs only while tracing: exactly one increment per compiled program.
        with self._lock:
            self._compilations += 1
        return self._outputs(log_likelihoods(residuals, params.scale), params.weights, keys)

    def _classify_missing(
        self, residuals: Any, params: MixtureParams, keys: Any, observed: Any
    ) -> Any:
        """_classify_padded for a batch with missing coordinates (observed: (B, D) bool)."""
        with self._lock:
            self._compilations += 1
        log_lik = marginal_log_likelihoods(residuals, observed, params.scale)
        return self._outputs(log_lik, params.weights, keys)

    def _outputs(self, log_lik: Any, weights: Any, keys: Any) -> Any:
        """(assignment, probs, log p(x)) from log p(x | component), (K, B)."""
        probs, log_px = _normalised(jnp.log(weights)[:, None] + log_lik)
        if self.temperature == 0:
            return assign(log_lik, weights, 0, None), probs, log_px
        # One draw per record, each from that record's own key: a record's draw does not depend
        # on its batch or position, so a replayed record draws the same assignment.
        assignment = jax.vmap(
            lambda column, key: assign(column[:, None], weights, 1, key)[0], in_axes=(1, 0)
        )(log_lik, keys)
        return assignment, probs, log_px

    def prepare(self, params: MixtureParams) -> Prepared:
        """Checks parameters against this classifier and puts weights and scales on the device
        as float32; locations stay in float64 on the host (see Prepared).

        Serving calls this once per model version; calls with prepared parameters skip it.
        """
        self._check(params)
        weights, scale = (np.asarray(v, np.float64) for v in (params.weights, params.scale))
        locs = np.asarray(params.locs, np.float64)
        device = MixtureParams(
            *(jnp.asarray(v, dtype=jnp.float32) for v in (weights, np.zeros_like(locs), scale))
        )
        return Prepared(device, locs)

    def residuals(self, points: Any, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """(x - loc_k per component, (K, B, D) float32, computed in float64; which coordinates
        are observed, (B, D) bool) for points (B, D) or (B,) when D == 1, NaN where missing."""
        x64 = np.asarray(points, dtype=np.float64)
        if x64.ndim == 1 and self.dim == 1:
            x64 = x64[:, None]
        if x64.ndim != 2 or x64.shape[1] != self.dim:
            raise ValueError(f"points must have shape (B, {self.dim}), got {x64.shape}")
        observed = ~np.isnan(x64)
        if not observed.any(axis=1).all():
            raise ValueError("a point has no observed coordinate")
        # Missing coordinates (NaN) get residual 0; the program marginalises them out.
        diff = np.where(observed[None], x64[None] - prepared.locs[:, None, :], 0.0)
        return diff.astype(np.float32), observed

    def _check(self, params: MixtureParams) -> None:
        k, d = self.n_components, self.dim
        expect_scale = {"shared": (d,), "diagonal": (k, d), "cholesky": (k, d, d)}[self.layout]
        if (
            np.shape(params.weights) != (self.n_components,)
            or np.shape(params.locs) != (self.n_components, self.dim)
            or np.shape(params.scale) != expect_scale
        ):
            raise ValueError(
                f"parameters of shape weights={np.shape(params.weights)}, locs="
                f"{np.shape(params.locs)}, scale={np.shape(params.scale)} do not fit this "
                f"classifier (K={self.n_components}, D={self.dim}, scale={expect_scale})"
            )

    def _size_for(self, n: int, sizes: tuple[int, ...]) -> int:
        for size in sizes:
            if n <= size:
                return size
        return sizes[-1]

    def __call__(
        self, points: Any, params: MixtureParams | Prepared, key: Any = None, *, keys: Any = None
    ) -> Classification:
        """Classifies points (B, D), or (B,) when D == 1; NaN coordinates are missing (D >= 2)
        and marginalised out.

        Temperature 1 draws each record's assignment with its own PRNG key: either `keys`,
        (B, 2) uint32 raw keys, one per record (the worker derives them from the record's
        Kafka coordinates), or one `key` from which row i's key is `fold_in(key, i)`.
        params: Prepared, from `prepare()` (MixtureParams are prepared on every call).

        Rows with missing coordinates go through their own program, so a row's result never
        depends on what else is in the batch.
        """
        prepared = params if isinstance(params, Prepared) else self.prepare(params)
        residuals, observed = self.residuals(points, prepared)
        complete = observed.all(axis=1)
        n = residuals.shape[1]
        row_keys = self._row_keys(n, key, keys)
        if complete.all():
            return self._run(residuals, row_keys, None, prepared.device)
        out = Classification(
            np.zeros(n, np.int32),
            np.zeros((n, self.n_components), np.float32),  # as the programs return them
            np.zeros(n, np.float32),
        )
        for rows, mask in ((complete, None), (~complete, observed)):
            idx = np.flatnonzero(rows)
            if len(idx) == 0:
                continue
            part = self._run(
                residuals[:, idx],
                None if row_keys is None else row_keys[idx],
                None if mask is None else mask[idx],
                prepared.device,
            )
            for whole, piece in zip(out, part, strict=True):
                whole[idx] = piece
        return out

    def _run(
        self,
        residuals: np.ndarray,
        row_keys: np.ndarray | None,
        observed: np.ndarray | None,
        device: Any,
    ) -> Classification:
        """Runs padded chunks of residuals (K, B, D) through the complete-data program, or
        through the missing-values program when `observed` is given (chunks of at most
        MISSING_CHUNK rows)."""
        sizes = self.sizes if observed is None else self.missing_sizes
        step = sizes[-1]
        total = residuals.shape[1]
        parts = []
        for start in range(0, max(total, 1), step):
            chunk = residuals[:, start : start + step]
            n = chunk.shape[1]
            size = self._size_for(n, sizes)
            if row_keys is None:
                chunk_keys = self._no_keys[size]
            else:
                chunk_keys = np.zeros((size, 2), np.uint32)
                chunk_keys[:n] = row_keys[start : start + n]
            if n != size:
                padded = np.zeros((self.n_components, size, self.dim), dtype=np.float32)
                padded[:, :n] = chunk
                chunk = padded
            if observed is None:
                outputs = self._program(chunk, device, chunk_keys)
            else:
                mask = np.ones((size, self.dim), dtype=bool)
                mask[:n] = observed[start : start + n]
                outputs = self._program_missing(chunk, device, chunk_keys, mask)
            assignment, probs, log_px = jax.device_get(outputs)
            # Rows past n are padding: their outputs are dropped here.
            parts.append((assignment[:n], probs[:, :n].T, log_px[:n]))
        if len(parts) == 1:
            return Classification(*parts[0])
        return Classification(*(np.concatenate(p) for p in zip(*parts, strict=True)))

    def _row_keys(self, n: int, key: Any, keys: Any) -> np.ndarray | None:
        if self.temperature == 0:
            return None
        if keys is not None:
            row_keys = np.asarray(keys, dtype=np.uint32)
            if row_keys.shape != (n, 2):
                raise ValueError(f"keys must have shape ({n}, 2), got {row_keys.shape}")
            return row_keys
        if key is None:
            raise ValueError("temperature 1 draws a posterior sample and needs an explicit rng key")
        folded = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        if jnp.issubdtype(folded.dtype, jax.dtypes.prng_key):
            folded = jax.random.key_data(folded)
        return np.asarray(folded, dtype=np.uint32)

    def warmup(self) -> int:
        """Compiles every padding size now; returns the number of compilations done."""
        before = self._compilations
        k, d = self.n_components, self.dim
        scale = {
            "shared": np.ones(d),
            "diagonal": np.ones((k, d)),
            "cholesky": np.broadcast_to(np.eye(d), (k, d, d)),
        }[self.layout]
        params = MixtureParams(np.full(k, 1.0 / k), np.zeros((k, d)), scale)
        for size in self.sizes:
            self(np.zeros((size, d)), params, keys=np.zeros((size, 2), np.uint32))
        if d >= 2:  # the program for rows with missing coordinates, too
            for size in self.missing_sizes:
                x = np.zeros((size, d))
                x[:, 0] = np.nan
                self(x, params, keys=np.zeros((size, 2), np.uint32))
        return self._compilations - before


def assign(log_lik: Any, weights: Any, temperature: int, key: Any) -> Any:
    """The assignment of each point by `infer_discrete` on the mixture with its globals fixed:
    MAP (temperature 0) or a posterior draw (1). log_lik: log p(x | component), (K, B).

    The likelihood enters as a factor computed by `log_likelihoods` rather than as a Normal site:
    funsor turns a Normal into an expanded quadratic form whose float32 rounding moved the MAP
    by up to 1e-3 in log-odds, depending on the batch. Each record's factor is also shifted by
    its own log p(x) maximum over components, which leaves its posterior unchanged: funsor's
    MAP sums the per-record maxima over the data plate and works back from that total, and a
    total of zeros carries no rounding, where one of 4,096 terms near -3 does (about 1e-3).
    So the MAP is an argmax of the returned probabilities (ties only where two probabilities
    are equal in float32), and a record's result does not depend on its batch.
    """
    if weights.shape[0] == 1:  # nothing to infer (funsor cannot enumerate one value)
        return jnp.zeros(log_lik.shape[1], jnp.int32)
    discrete = infer_discrete(
        likelihood_assignment_model,
        temperature=temperature,
        first_available_dim=-2,  # left of the data plate, as in the tutorial
        rng_key=key,
    )
    seeded = discrete if key is None else handlers.seed(discrete, key)
    top = (jnp.log(weights)[:, None] + log_lik).max(0)  # per record: changes no posterior
    trace = handlers.trace(seeded).get_trace(log_lik - top, weights)
    return jnp.reshape(trace["assignment"]["value"], (-1,)).astype(jnp.int32)


def marginal_log_likelihoods(residuals: Any, observed: Any, scale: Any) -> Any:
    """`log_likelihoods` over each record's observed coordinates (observed: (B, D) bool): the
    marginal of a Gaussian over a subset of its coordinates, exactly, for every layout.

    A missing coordinate gets residual 0 and unit variance, uncorrelated with the rest, which
    adds nothing to the density; the 2 pi term counts observed coordinates only.
    """
    return form_of_scale(scale).marginal_log_density(residuals, observed, scale)


def make_classifier(
    n_components: int,
    dim: int = 1,
    *,
    layout: str | None = None,
    per_component_scale: bool = False,
    temperature: int = 0,
    max_batch: int = 4096,
    sizes: tuple[int, ...] | None = None,
) -> Classifier:
    """Builds the jitted classifier once; call `.warmup()` before serving.

    layout: shared, diagonal or cholesky (`MixtureParams.layout`); per_component_scale=True is
    the older way to say diagonal.
    """
    layout = layout or ("diagonal" if per_component_scale else "shared")
    return Classifier(n_components, dim, layout, temperature, max_batch, sizes)


def classifier_for(params: MixtureParams, **kwargs: Any) -> Classifier:
    """A classifier shaped for these parameters."""
    return make_classifier(params.n_components, params.dim, layout=params.layout, **kwargs)
