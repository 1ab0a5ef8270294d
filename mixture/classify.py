"""The serving classifier: jitted `infer_discrete` over padded micro-batches.

`make_classifier` builds it once per (K, D, scale layout, temperature); the layouts are shared or
per-component diagonal scales and per-component Cholesky factors, which serve every covariance
type (`mixture.covariance`). Parameters are jit *arguments*, so a new model version never
recompiles; batches are padded up to one of a few fixed sizes (by default chosen per backend,
`default_sizes`), so any batch up to `max_batch` reuses one of at most len(sizes) programs, all
of which `warmup()` compiles up front. Each trace of the program bumps `compilations`, which
tests and the worker's metrics read. On a CPU the programs are compiled with
`CPU_COMPILER_OPTIONS`.

Each component's likelihood log p(x | k) is computed once, in closed form, from residuals
x - loc_k taken on the device in float64 and rounded once to float32 (`residuals_on_device`):
exact at any offset and any distance between components. The points cross to the device once,
as their float64 values (B x D, 8 bytes each, whatever K); the locations are put there once
per model version (`Classifier.prepare`). Over the observed coordinates when some are missing.
From the likelihood come the membership probabilities, log p(x), and the assignment:
`infer_discrete` on the mixture with that likelihood as a factor, so the MAP assignment is an
argmax of the returned probabilities. The rest is float32: a point so far from every component
that its squared standardised distance overflows (about 1e19 standard deviations) gets
non-finite results, which the worker dead-letters as `not_classifiable`.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from numpyro import handlers
from numpyro.contrib.funsor import infer_discrete

from mixture.covariance_forms import form_of_scale
from mixture.model import likelihood_assignment_model
from mixture.params import MixtureParams

#: XLA options the serving programs are compiled with on a CPU: reductions stay XLA's own loops
#: rather than YNNPACK fusions (dots keep theirs). A reduction over the components of a (K, B)
#: array, as log p(x) and funsor's MAP take, ran as a YNNPACK fusion up to 10x slower from
#: batches of 32,768, and a whole closed-form program about 5x slower at 65,536
#: (bench/results/inference.md shows it both ways); other backends get none.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """The XLA options a serving program is compiled with on `platform` (default: the platform
    JAX places computations on now, `jax.default_device` included)."""
    return dict(CPU_COMPILER_OPTIONS) if (platform or _platform()) == "cpu" else None


def serving_jit(fn: Any, platform: str | None = None) -> Any:
    """jax.jit(fn) with the serving programs' `compiler_options`."""
    return jax.jit(fn, compiler_options=compiler_options(platform))


def _platform() -> str:
    device = getattr(jax.config, "jax_default_device", None)
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


# --- exact residuals: float64 on the device, inside a float32 program -------------------------


def float64_words(x: np.ndarray) -> np.ndarray:
    """x (..., D) float64, C-contiguous, as the (..., D, 2) uint32 array of its bits (a view):
    how float64 values cross to the device and enter a float32 program."""
    return x.view(np.uint32).reshape(*x.shape, 2)


def residuals_on_device(words: Any, loc_words: Any) -> Any:
    """x - loc_k per component, (K, B, D) float32, each the float64 difference rounded once to
    float32, as numpy's float64 residuals cast to float32 are (exact at any offset and any
    distance between components). words: (B, D, 2) uint32, the points' float64 bits as they
    crossed to the device; loc_words: (K, D, 2), the locations'. Traceable.

    JAX without `jax_enable_x64` has no float64 arrays, so this is a small program exported with
    it on (`jax.export`, for any batch, per K and D, for CPUs and GPUs) and called from the
    traced one, whose own arithmetic stays float32: XLA compiles them as one program, the
    float64 subtraction fused into what reads the residuals.
    """
    k, dim, _ = loc_words.shape
    return _residual_program(k, dim).call(words, loc_words)


def _residuals64(words: Any, loc_words: Any) -> Any:
    x, locs = (_as_float64(w) for w in (words, loc_words))
    return (x[None] - locs[:, None]).astype(jnp.float32)


def _as_float64(words: Any) -> Any:
    """(..., 2) uint32 (low word, high word: little-endian float64 bits) as float64 (...),
    elementwise, so XLA fuses it into what reads it (a bitcast of the pair is a reduction)."""
    low, high = (words[..., i].astype(jnp.uint64) for i in (0, 1))
    return jax.lax.bitcast_convert_type((high << 32) | low, jnp.float64)


@functools.cache
def _residual_program(k: int, dim: int) -> Any:
    """`_residuals64` for k locations and any batch of points in dim dimensions, exported with
    float64 on; made once per (k, dim)."""
    (batch,) = export.symbolic_shape("batch")
    words = jax.ShapeDtypeStruct((batch, dim, 2), jnp.uint32)
    loc_words = jax.ShapeDtypeStruct((k, dim, 2), jnp.uint32)
    with jax.enable_x64(True):
        exported = export.export(jax.jit(_residuals64), platforms=_FLOAT64_PLATFORMS)
        return exported(words, loc_words)


#: The platforms the residuals are exported for: those with float64 arithmetic.
_FLOAT64_PLATFORMS = ("cpu", "cuda", "rocm")


class ServingParams(NamedTuple):
    """What the classifier programs take besides the points, on the device."""

    weights: Any  # (K,) float32
    locs: Any  # (K, D, 2) uint32: the float64 locations' bits (`float64_words`)
    scale: Any  # (D,), (K, D) or (K, D, D) float32: the serving scale (see `MixtureParams`)


class Prepared(NamedTuple):
    """Parameters ready to serve, on the device (see ServingParams): weights and scales in
    float32, the locations in float64, so that each residual is taken in float64 there.

    A single shift (the mixture's mean) with float32 residuals would not be exact: components
    far from it would sit where a float32 step is wider than their spread.
    """

    device: ServingParams


#: Alignment, in bytes, that lets a CPU device read a host array in place.
_ALIGN = 64

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


def posterior(residuals: Any, params: MixtureParams | ServingParams) -> tuple[Any, Any, Any]:
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
        platform = _platform()
        if platform not in ("gpu", *_FLOAT64_PLATFORMS):  # JAX names CUDA and ROCm "gpu"
            # The residuals are taken in float64 on the device, which only these have.
            raise ValueError(
                f"the classifier runs on a CPU or a GPU (CUDA, ROCm); JAX's default backend "
                f"here is {platform!r}"
            )
        self._program = serving_jit(self._classify_padded, platform)
        self._program_missing = serving_jit(self._classify_missing, platform)
        #: Outputs are read with np.asarray (`_fetch`): jax.device_get costs about 12 µs more a
        #: call on a CPU, half a whole call at a batch of 1,024. Off a CPU each copy is started
        #: first, so the three overlap.
        self._copy_ahead = platform != "cpu"
        self._compute_once = platform == "cpu"  # see `_once`
        self._local = threading.local()  # per thread: the buffers the points cross from
        _residual_program(n_components, dim)  # made here, outside any trace
        #: Padding sizes of the missing-values program: its per-record factors take
        #: K x B x D x D memory, so its chunks stay small.
        self.missing_sizes = tuple(
            sorted(
                {size for size in self.sizes if size < MISSING_CHUNK}
                | {min(MISSING_CHUNK, self.max_batch)}
            )
        )
        #: Temperature 0 reads no key; it gets these placeholders (one program per size).
        self._no_keys = {
            size: np.zeros((size, 2), np.uint32) for size in (*self.sizes, *self.missing_sizes)
        }

    @property
    def compilations(self) -> int:
        """How many programs have been traced and compiled so far."""
        return self._compilations

    def _classify_padded(self, words: Any, params: ServingParams, keys: Any) -> Any:
        """(assignment, probs (K, B), log p(x)) for a padded batch: words (B, D, 2) uint32, the
        float64 points' bits (`float64_words`)."""
        # Runs only while tracing: exactly one increment per compiled program.
        with self._lock:
            self._compilations += 1

        def density(words: Any, params: ServingParams) -> Any:
            return log_likelihoods(residuals_on_device(words, params.locs), params.scale)

        log_lik = self._once(density, words, params)
        return self._outputs(log_lik, params.weights, keys)

    def _classify_missing(self, words: Any, params: ServingParams, keys: Any, observed: Any) -> Any:
        """_classify_padded for a batch with missing coordinates (observed: (B, D) bool; the
        missing ones 0 in words)."""
        with self._lock:
            self._compilations += 1

        def density(words: Any, params: ServingParams, observed: Any) -> Any:
            residuals = residuals_on_device(words, params.locs)  # the marginal drops missing ones
            return marginal_log_likelihoods(residuals, observed, params.scale)

        log_lik = self._once(density, words, params, observed)
        return self._outputs(log_lik, params.weights, keys)

    def _once(self, density: Any, words: Any, params: ServingParams, *rest: Any) -> Any:
        """density(words, params, *rest), the log-likelihoods (K, B), computed once into memory
        on a CPU (elsewhere, as XLA fuses them).

        XLA fuses an elementwise producer into each of its consumers, so the residuals and
        densities would be computed anew inside each of the four fusions that read them
        (probabilities, log p(x), funsor's MAP and its gather), three of them scalar loops: at a
        batch of 16,384 that took longer than the closed form's whole program. A conditional
        is a fusion boundary (`jax.lax.optimization_barrier` is removed before fusion on a
        CPU): both branches compute the same densities, so the predicate, read at run time,
        changes nothing. On a GPU a conditional reads its predicate back on the host, a
        synchronisation, so there XLA fuses as it will.
        """
        if not self._compute_once:
            return density(words, params, *rest)
        return jax.lax.cond(params.weights[0] >= 0, density, density, words, params, *rest)

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
        """Checks parameters against this classifier and puts them on the device: weights and
        scales as float32, locations as float64 (see Prepared).

        Serving calls this once per model version; calls with prepared parameters skip it.
        """
        self._check(params)
        locs = np.ascontiguousarray(params.locs, np.float64)
        weights, scale = (jnp.asarray(v, dtype=jnp.float32) for v in (params.weights, params.scale))
        return Prepared(ServingParams(weights, jnp.asarray(float64_words(locs)), scale))

    def points(self, points: Any) -> np.ndarray:
        """points (B, D), or (B,) when D == 1, as a float64 (B, D) array; checks the shape."""
        return self._float_points(points).astype(np.float64, copy=False)

    def _float_points(self, points: Any) -> np.ndarray:
        """`points`, but float32 points stay float32: they are copied into float64 only where
        they cross to the device (exactly), not first into a float64 array of their own."""
        x = np.asarray(points)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if x.ndim == 1 and self.dim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"points must have shape (B, {self.dim}), got {x.shape}")
        return x

    def device_input(self, points: Any) -> tuple[np.ndarray, np.ndarray]:
        """(the points as they cross to the device: (B, D, 2) uint32, their float64 bits, 0
        where missing, `float64_words`; which coordinates are observed, (B, D) bool) for points
        (B, D) or (B,) when D == 1, NaN where missing."""
        x64 = self.points(points)
        observed = ~np.isnan(x64)
        return float64_words(np.where(observed, x64, 0.0)), observed

    def residuals(self, points: Any, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """(x - loc_k per component, (K, B, D) float32, as the programs take them on the device
        (`residuals_on_device`); which coordinates are observed, (B, D) bool). Missing
        coordinates get residual 0. For tests and benchmarks: serving never forms them off the
        device."""
        words, observed = self.device_input(points)
        residuals = np.asarray(_residuals_program(words, prepared.device))
        return np.where(observed[None], residuals, np.float32(0.0)), observed

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
        x = self._float_points(points)
        n = len(x)
        row_keys = self._row_keys(n, key, keys)
        flat = x.reshape(-1)
        if not np.isnan(np.dot(flat, flat)):  # no NaN: one pass, no mask (the common case)
            return self._run(x, row_keys, None, prepared)
        observed = ~np.isnan(x)
        if not observed.any(axis=1).all():
            raise ValueError("a point has no observed coordinate")
        complete = observed.all(axis=1)
        out = Classification(
            np.zeros(n, np.int32),
            np.zeros((n, self.n_components), np.float32),  # as the programs return them
            np.zeros(n, np.float32),
        )
        for rows, mask in ((complete, None), (~complete, observed)):
            idx = np.flatnonzero(rows)
            if len(idx) == 0:
                continue
            rows_x = x[idx]
            rows_mask = None if mask is None else mask[idx]
            if rows_mask is not None:
                rows_x = np.where(rows_mask, rows_x, 0.0)  # 0 where missing
            part = self._run(
                rows_x, None if row_keys is None else row_keys[idx], rows_mask, prepared
            )
            for whole, piece in zip(out, part, strict=True):
                whole[idx] = piece
        return out

    def _run(
        self,
        x: np.ndarray,
        row_keys: np.ndarray | None,
        observed: np.ndarray | None,
        prepared: Prepared,
    ) -> Classification:
        """Runs padded chunks of points (B, D), float with no NaN, through the complete-data
        program, or through the missing-values program when `observed` is given (chunks of at
        most MISSING_CHUNK rows). Each chunk crosses to the device as float64 bits."""
        sizes = self.sizes if observed is None else self.missing_sizes
        step = sizes[-1]
        total = len(x)
        results = []
        for start in range(0, max(total, 1), step):
            chunk = x[start : start + step]
            n = len(chunk)
            size = self._size_for(n, sizes)
            if row_keys is None:
                chunk_keys = self._no_keys[size]
            else:
                chunk_keys = np.zeros((size, 2), np.uint32)
                chunk_keys[:n] = row_keys[start : start + n]
            x_pad, words = self._buffer(size)
            x_pad[:n] = chunk
            if n < size:
                # Padding repeats a real row (its outputs are dropped below): a row of zeros
                # could be so far from every component that its likelihood overflows, and the
                # batch's MAP must not see a non-finite row that is not the caller's.
                x_pad[n:] = x_pad[0] if n else 0.0
            if observed is None:
                outputs = self._program(words, prepared.device, chunk_keys)
            else:
                mask = np.ones((size, self.dim), dtype=bool)
                mask[:n] = observed[start : start + n]
                outputs = self._program_missing(words, prepared.device, chunk_keys, mask)
            assignment, probs, log_px = self._fetch(outputs)
            results.append((assignment[:n], probs[:, :n].T, log_px[:n]))
        if len(results) == 1:
            return Classification(*results[0])
        return Classification(*(np.concatenate(p) for p in zip(*results, strict=True)))

    def _buffer(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's buffer for a chunk of `size` rows, made on first use: (size, D)
        float64, 64-byte aligned, and its bits as the programs take them (`float64_words`).

        Aligned, the points cross to a CPU device without a copy (JAX reads them in place; a
        copy took tens of µs at a batch of 65,536), and memory used again costs no page faults.
        A chunk's outputs are read before the next chunk is written into the same buffer, so
        nothing reads it while it changes; each thread has its own.
        """
        pool: dict[int, tuple[np.ndarray, np.ndarray]] | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        if size not in pool:
            nbytes = size * self.dim * 8
            raw = np.zeros(nbytes + _ALIGN, np.uint8)
            start = -raw.ctypes.data % _ALIGN
            x_pad = raw[start : start + nbytes].view(np.float64).reshape(size, self.dim)
            pool[size] = (x_pad, float64_words(x_pad))
        return pool[size]

    def _fetch(self, outputs: tuple[Any, ...]) -> list[np.ndarray]:
        """A program's outputs on the host, read-only as jax.device_get returns them (see
        `_copy_ahead`)."""
        if self._copy_ahead:
            for out in outputs:
                out.copy_to_host_async()
        return [np.asarray(out) for out in outputs]

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


@jax.jit
def _residuals_program(words: Any, params: ServingParams) -> Any:
    return residuals_on_device(words, params.locs)


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
