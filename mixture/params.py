"""Mixture parameters: the pytree that jitted code takes, and the versioned JSON form on the wire.

`MixtureParams` is what the classifier and the fit pass around (a NamedTuple of arrays, so a new
model is just new leaves of the same shapes and never recompiles). `ModelParams` is the immutable,
versioned record that the trainer publishes and the worker loads; `from_json` validates everything
it reads, since parameters cross a process boundary.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple

import numpy as np

from mixture.covariance import (
    check_covariance,
    check_serving_scale,
    compact_scale,
    infer_covariance,
    is_cholesky,
    serving_scale,
)

#: Written by this version; `gmm-params/1` (diagonal scales, no `covariance` field) still loads.
SCHEMA = "gmm-params/2"
SCHEMA_V1 = "gmm-params/1"
#: Served in float32: locations as far out as points may be, scales (standard deviations) well
#: inside float32's range once squared.
MAX_ABS_LOC = 1e15
MIN_SCALE, MAX_SCALE = 1e-15, 1e15
#: Size limits of a served model; full and tied covariances are bounded by K x D x D because
#: records with missing coordinates get per-record factors of that size.
MAX_COMPONENTS, MAX_DIM, MAX_CHOLESKY_ENTRIES = 256, 1024, 32768
#: Mixture weights come from float32 fits; their sum is checked to this tolerance.
SIMPLEX_ATOL = 1e-4


class ParamsError(ValueError):
    """Parameters that must not be served: the message says which field and why; `reason` is
    a short code (`not_json` or `invalid`) for metrics."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class MixtureParams(NamedTuple):
    """The globals of a K-component, D-dimensional Gaussian mixture (a JAX pytree).

    weights: (K,) on the simplex. locs: (K, D). scale, in one of three layouts (see
    `mixture.covariance`): (D,) a diagonal scale shared by all components, (K, D) a diagonal
    scale per component, or (K, D, D) a lower Cholesky factor of each component's covariance.
    """

    weights: Any
    locs: Any
    scale: Any

    @property
    def n_components(self) -> int:
        return int(np.shape(self.weights)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.locs)[1])

    @property
    def per_component_scale(self) -> bool:
        return len(np.shape(self.scale)) >= 2

    @property
    def layout(self) -> str:
        """shared, diagonal or cholesky: what the classifier is compiled for."""
        return {1: "shared", 2: "diagonal", 3: "cholesky"}[len(np.shape(self.scale))]


class Priors(NamedTuple):
    """Priors over the globals, in the data's own units.

    weights ~ Dirichlet(concentration * ones(K)); scale ~ LogNormal(scale_log_mean, scale_log_sd)
    per dimension; locs ~ Normal(loc_center, loc_scale) per component and dimension.
    """

    # Any: numbers and numpy arrays on the host, jax arrays inside jitted code.
    concentration: Any  # scalar
    loc_center: Any  # (D,)
    loc_scale: Any  # (D,)
    scale_log_mean: Any  # (D,)
    scale_log_sd: Any  # scalar
    #: LKJ concentration of the correlations (full and tied covariances); 1 is uniform.
    lkj_concentration: Any = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "lkj_concentration": float(self.lkj_concentration),
            "concentration": float(self.concentration),
            "loc_center": [float(v) for v in self.loc_center],
            "loc_scale": [float(v) for v in self.loc_scale],
            "scale_log_mean": [float(v) for v in self.scale_log_mean],
            "scale_log_sd": float(self.scale_log_sd),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Priors:
        return cls(
            concentration=float(obj["concentration"]),
            loc_center=np.asarray(obj["loc_center"], dtype=np.float64),
            loc_scale=np.asarray(obj["loc_scale"], dtype=np.float64),
            scale_log_mean=np.asarray(obj["scale_log_mean"], dtype=np.float64),
            scale_log_sd=float(obj["scale_log_sd"]),
            lkj_concentration=float(obj.get("lkj_concentration", 1.0)),
        )


def seed_priors(dim: int = 1) -> Priors:
    """The tutorial's priors exactly: Dirichlet(0.5), LogNormal(0, 2), Normal(0, 10)."""
    return Priors(0.5, np.zeros(dim), np.full(dim, 10.0), np.zeros(dim), 2.0)


def data_priors(points: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> Priors:
    """Weak priors placed relative to the data's own location and spread.

    They carry the seed's shape (same log-scale width, locs ten spreads wide) but are centred
    on the data, so values near 0, 50 or 10^4 are fit alike. stats: the points' column_stats,
    if already computed. The weights' Dirichlet is flat (1, not the seed's 0.5): below 1 the
    density grows without bound as a weight goes to 0, so a K larger than the data support had
    no MAP point, and its fit drove the spare weight down until the step cap.
    """
    mean, std = column_stats(points) if stats is None else stats
    return Priors(1.0, mean, 10.0 * std, np.log(std), 2.0)


def column_stats(
    points: np.ndarray, complete: bool | None = None, sums: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation over its observed (non-NaN) values, in float64.
    (NaN-aware reductions copy the data several times: at 1M points they cost more than a
    warm refit's optimisation, so they run only when something is missing.) complete: whether
    the points are known to miss no value (None: look); sums: their column sums, if known
    (`range_and_sums`)."""
    x = np.asarray(points, np.float64)
    # The maximum is NaN if and only if some value is: one pass, no temporary.
    missing = bool(np.isnan(x.max(initial=0.0))) if complete is None else not complete
    if missing:
        return np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    n = max(len(x), 1)
    # The squared deviations from the mean a block of rows at a time: x.std() makes a temporary
    # as big as the data (at 1M points, allocating it cost more than the sums). Two passes, not
    # the sums of squares in one: a glitch at 1e15 would cancel every digit of the variance.
    if sums is None:
        sums = range_and_sums(x)[2] if len(x) else np.zeros(x.shape[1])
    mean = sums / n
    sq = np.zeros_like(mean)
    group = row_group(x.shape[1])
    buffer = np.empty(min(_ROWS, len(x)) * x.shape[1])
    ones = np.ones(max(min(_ROWS, len(x)), 1))
    for i in range(0, len(x), _ROWS):
        for part, rows in grouped_rows(x[i : i + _ROWS], group):
            d = np.subtract(part, np.tile(mean, rows), out=buffer[: part.size].reshape(part.shape))
            np.multiply(d, d, out=d)
            sq += (ones[: len(d)] @ d).reshape(rows, -1).sum(axis=0)
    return mean, np.sqrt(sq / n)


def row_group(dim: int) -> int:
    """How many consecutive rows of D values `grouped_rows` lays out as one row (a power of
    two, about 512 values): numpy's broadcast of a (D,) row over an (N, D) block runs its inner
    loop D values long, and at D=8 took 2.5x as long as over rows of 512. One value per row
    (D=1) is a contiguous run already: 1."""
    return 1 if dim <= 1 else 1 << max(0, (512 // dim).bit_length() - 1)


def grouped_rows(block: np.ndarray, group: int) -> list[tuple[np.ndarray, int]]:
    """An (R, D) block as (part, rows) pairs: its first R - R % group rows as a
    (R // group, group * D) array (a view where the block is C-contiguous), then the remaining
    rows as they are (rows 1); a (D,) vector tiled `rows` times lines up with each part."""
    head = len(block) - len(block) % group
    parts = [(block[:head].reshape(-1, group * block.shape[1]), group)] if head else []
    if head < len(block):
        parts.append((block[head:], 1))
    return parts


def range_and_sums(x: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(smallest value, largest value, column sums) of a non-empty (N, D) float64 array in one
    pass over memory, a block of rows at a time (the sums by BLAS matrix-vector products).
    Either extreme is NaN if any value is. Three whole-array passes (min, max, the sums) cost
    twice as long at 1M points of D=8."""
    ones = np.ones(min(_ROWS, len(x)))
    lows, highs = [], []
    sums = np.zeros(x.shape[1])
    for i in range(0, len(x), _ROWS):
        block = x[i : i + _ROWS]
        lows.append(block.min())
        highs.append(block.max())
        sums += ones[: len(block)] @ block
    return float(np.min(lows)), float(np.max(highs)), sums


#: Rows per block of the column statistics' passes (a block stays in cache).
_ROWS = 1 << 15


@dataclasses.dataclass(frozen=True)
class FitMetadata:
    """Where a model came from; informational, carried with the parameters."""

    fitted_at: str | None = None
    n_points: int | None = None
    final_loss: float | None = None
    fit_seconds: float | None = None
    priors: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FitMetadata:
        """ParamsError when a known field has the wrong type (readers format and compute with
        them: a number as `fitted_at` broke the worker's age gauge)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: obj[k] for k in names if k in obj}
        for name, value in known.items():
            if value is None:
                continue
            if name == "fitted_at":
                ok = isinstance(value, str)
            elif name == "n_points":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif name == "priors":
                ok = isinstance(value, dict)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok:
                raise ParamsError(f"metadata.{name} has the wrong type: {value!r:.60}")
        extra = {k: v for k, v in obj.items() if k not in names}
        return cls(**known, extra=extra)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """A versioned, validated model: what the trainer publishes and the worker serves.

    covariance: the covariance type (`mixture.covariance`); None infers it from the scale's
    layout (tied-diag, diag or full).
    """

    version: int
    mixture: MixtureParams
    metadata: FitMetadata = dataclasses.field(default_factory=FitMetadata)
    covariance: str | None = None

    def __post_init__(self) -> None:
        validate_mixture(self.mixture)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ParamsError(f"version must be a non-negative integer, got {self.version!r}")
        covariance = self.covariance or infer_covariance(self.mixture.scale)
        try:
            covariance = check_covariance(covariance)
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
        m = self.mixture
        why = check_serving_scale(
            covariance, np.asarray(m.scale, np.float64), m.n_components, m.dim
        )
        if why:
            raise ParamsError(why)
        object.__setattr__(self, "covariance", covariance)

    def with_version(self, version: int) -> ModelParams:
        return dataclasses.replace(self, version=version)

    def to_json(self) -> dict[str, Any]:
        m = self.mixture
        dim = m.dim
        locs = np.asarray(m.locs, dtype=np.float64)
        covariance = str(self.covariance)
        compact = compact_scale(covariance, np.asarray(m.scale, dtype=np.float64))
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "version": self.version,
            "covariance": covariance,
            "n_components": m.n_components,
            "dim": dim,
            "weights": np.asarray(m.weights, dtype=np.float64).tolist(),
            "locs": locs[:, 0].tolist() if dim == 1 else locs.tolist(),
        }
        if is_cholesky(covariance):
            out["scale_tril"] = compact.tolist()
        elif covariance == "tied-diag" and dim == 1:
            out["scale"] = float(compact[0])
        else:
            out["scale"] = compact.tolist()
        out["metadata"] = self.metadata.to_json()
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), allow_nan=False)

    @classmethod
    def from_json(cls, obj: Any) -> ModelParams:
        """Validates and loads the JSON form (`gmm-params/2`, or `/1`); raises ParamsError with
        the reason otherwise."""
        if not isinstance(obj, dict):
            raise ParamsError("parameters must be a JSON object")
        schema = obj.get("schema", SCHEMA_V1)
        if schema not in (SCHEMA, SCHEMA_V1):
            raise ParamsError(f"unknown schema {schema!r}, expected {SCHEMA!r} or {SCHEMA_V1!r}")
        if schema == SCHEMA_V1:
            covariance = None
        else:
            covariance = obj.get("covariance")
            if not isinstance(covariance, str):
                raise ParamsError(f"{SCHEMA} needs a covariance type, got {covariance!r}")
            try:
                covariance = check_covariance(covariance)
            except ValueError as exc:
                raise ParamsError(str(exc)) from None
        scale_field = "scale_tril" if covariance and is_cholesky(covariance) else "scale"
        for field in ("version", "weights", "locs", scale_field):
            if field not in obj:
                raise ParamsError(f"missing field {field!r}")
        weights = _array(obj["weights"], "weights")
        locs = _array(obj["locs"], "locs")
        scale = _array(obj[scale_field], scale_field)
        if weights.ndim != 1:
            raise ParamsError(f"weights must be a list of K numbers, got shape {weights.shape}")
        k = weights.shape[0]
        if locs.ndim == 1:
            locs = locs[:, None]
        if locs.ndim != 2 or locs.shape[0] != k:
            raise ParamsError(f"locs must have K={k} rows (K or K x D), got shape {locs.shape}")
        dim = locs.shape[1]
        # Before a tied factor is copied K times (a diagonal scale (K, D) is no factor).
        _check_size(k, dim, cholesky=is_cholesky(covariance) if covariance else scale.ndim == 3)
        scale = _compact_to_serving(covariance, scale, k, dim)
        for field, expect in (("n_components", k), ("dim", dim)):
            if field in obj and (isinstance(obj[field], bool) or obj[field] != expect):
                raise ParamsError(f"{field}={obj[field]!r} disagrees with the arrays ({expect})")
        version = obj["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise ParamsError(f"version must be an integer, got {version!r}")
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ParamsError("metadata must be an object")
        return cls(
            version, MixtureParams(weights, locs, scale), FitMetadata.from_json(meta), covariance
        )

    @classmethod
    def loads(cls, text: str | bytes) -> ModelParams:
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParamsError(f"not valid JSON: {exc}", "not_json") from None
        except RecursionError:
            raise ParamsError("not valid JSON: nested too deeply", "not_json") from None
        return cls.from_json(obj)


def _compact_to_serving(covariance: str | None, scale: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Checks a compact scale's shape for its type and returns its serving form."""
    if covariance in (None, "tied-diag", "diag"):
        if covariance == "diag" and dim == 1 and scale.size == k and scale.ndim <= 1:
            return scale.reshape(k, 1)  # one number per component (a single one when K = 1)
        if scale.ndim == 0:
            if dim != 1:
                raise ParamsError(f"a scalar scale needs D=1, but locs have D={dim}")
            return scale.reshape(1)
        if scale.ndim == 1 and covariance != "diag":
            if scale.shape[0] != dim:
                raise ParamsError(f"scale must have D={dim} entries, got {scale.shape[0]}")
            return scale
        if scale.ndim == 2 and scale.shape == (k, dim) and covariance != "tied-diag":
            return scale
        raise ParamsError(f"scale must be scalar, (D,) or (K, D)=({k}, {dim}); got {scale.shape}")
    expect = {"spherical": (k,), "tied": (dim, dim), "full": (k, dim, dim)}[covariance]
    if scale.shape != expect:
        field = "scale" if covariance == "spherical" else "scale_tril"
        raise ParamsError(f"{covariance}: {field} must have shape {expect}, got {scale.shape}")
    return serving_scale(covariance, scale, k, dim)


def validate_mixture(m: MixtureParams) -> None:
    """Rejects disagreeing shapes, weights off the simplex, non-positive or non-finite scales."""
    weights = np.asarray(m.weights, dtype=np.float64)
    locs = np.asarray(m.locs, dtype=np.float64)
    scale = np.asarray(m.scale, dtype=np.float64)
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise ParamsError(f"weights must have shape (K,), got {weights.shape}")
    k = weights.shape[0]
    if locs.ndim != 2 or locs.shape[0] != k or locs.shape[1] < 1:
        raise ParamsError(f"locs must have shape (K, D) with K={k}, got {locs.shape}")
    dim = locs.shape[1]
    if scale.shape not in ((dim,), (k, dim), (k, dim, dim)):
        raise ParamsError(
            f"scale must have shape ({dim},), ({k}, {dim}) or ({k}, {dim}, {dim}), "
            f"got {scale.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ParamsError("weights must be finite and non-negative")
    if not math.isclose(float(weights.sum()), 1.0, abs_tol=SIMPLEX_ATOL):
        raise ParamsError(f"weights must sum to 1, got {weights.sum():.6g}")
    _check_size(k, dim, cholesky=scale.ndim == 3)
    if not np.all(np.isfinite(locs)) or np.any(np.abs(locs) > MAX_ABS_LOC):
        raise ParamsError(f"locs must be finite and within +-{MAX_ABS_LOC:g}")
    spread = np.diagonal(scale, axis1=-2, axis2=-1) if scale.ndim == 3 else scale
    if scale.ndim < 3 and (not np.all(np.isfinite(scale)) or np.any(scale <= 0)):
        raise ParamsError("scale must be finite and positive")
    if np.any(np.abs(spread) < MIN_SCALE) or np.any(np.abs(scale) > MAX_SCALE):
        raise ParamsError(
            f"scales must lie within [{MIN_SCALE:g}, {MAX_SCALE:g}]: served in float32"
        )


def _check_size(k: int, dim: int, cholesky: bool) -> None:
    """K, D and (for Cholesky factors) K x D x D within what a worker serves."""
    if k > MAX_COMPONENTS or dim > MAX_DIM:
        raise ParamsError(f"K={k}, D={dim}: at most K={MAX_COMPONENTS} and D={MAX_DIM} are served")
    if cholesky and k * dim * dim > MAX_CHOLESKY_ENTRIES:
        raise ParamsError(
            f"K x D x D = {k * dim * dim} covariance entries, at most {MAX_CHOLESKY_ENTRIES} "
            "are served (memory: records with missing values are classified with per-record "
            "factors)"
        )


def _array(value: Any, name: str) -> np.ndarray:
    """Numbers in nested lists of equal lengths as float64; not booleans, strings or integers
    beyond float64."""
    try:
        raw = np.asarray(value)
        if raw.dtype.kind not in "iuf":  # b: booleans, U: strings, O: ragged or huge integers
            raise TypeError
        arr = raw.astype(np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise ParamsError(
            f"{name} must be numbers in nested lists of equal lengths, got {value!r:.60}"
        ) from None
    return arr
