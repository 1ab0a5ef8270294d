"""The model as a scikit-learn estimator (`MapGaussianMixture`), for notebooks and pipelines.

It fits what the trainer fits (`fit_map`: the MAP globals of the Bayesian mixture, candidates
scored together, EM-preconditioned steps) and predicts what the worker predicts (the exact
posterior over components, missing coordinates marginalised), with scikit-learn's names:
`GaussianMixture`'s parameters and fitted attributes, so the two compare on the same terms.
Models move between the two (`from_gaussian_mixture`, `to_gaussian_mixture`) and to and from the
params topic's records (`to_params`, `from_params`: `gmm-params/2`, what `gmm-trainer publish
--params FILE` publishes).

scikit-learn is an optional dependency (`pip install .[sklearn]`): importing this module needs it.
"""

from __future__ import annotations

import datetime as dt
import numbers
import os
from typing import Any

import jax
import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from mixture.covariance import COVARIANCES, check_covariance, cholesky_factors
from mixture.evaluate import component_log_pdf, n_free_parameters
from mixture.fit import FitConfig, FitResult, fit_map, to_model_params
from mixture.labels import order_by_location
from mixture.params import MixtureParams, ModelParams
from mixture.robust import fit_robust
from mixture.select import DEFAULT_MAX_COMPONENTS, fit_auto
from mixture.sklearn_form import from_gaussian_mixture, to_gaussian_mixture, to_sklearn_arrays

#: scikit-learn's `init_params` words for the project's two ways to draw starting locations.
INIT_PARAMS = {"k-means++": "kmeans++", "random_from_data": "random"}


class MapGaussianMixture(DensityMixin, BaseEstimator):
    """A Gaussian mixture fitted by MAP (NumPyro's SVI with `TraceEnum_ELBO` and `AutoDelta`,
    EM-preconditioned steps), with scikit-learn's API and the names of
    `sklearn.mixture.GaussianMixture`.

    Parameters
    ----------
    n_components : int or "auto"
        K; "auto" fits K = 1..max_components and keeps the lowest BIC (`n_components_`).
    covariance_type : {"full", "tied", "diag", "spherical", "tied-diag"}
        scikit-learn's types, plus "tied-diag" (one diagonal shared by all components: the
        NumPyro tutorial's model).
    reg_covar : float
        Covariance floor, relative to each column's variance (scikit-learn's is absolute):
        the same number fits data in any units alike.
    n_init : int
        Starts, optimised together; the lowest final loss wins.
    init_params : {"k-means++", "random_from_data"}
        k-means++ seeding moved by a few Lloyd steps, or locations drawn from the data.
    priors : {"data", "seed"}
        Weak priors placed relative to the data, or the tutorial's fixed ones.
    tol : float
        Stop once a step changes the objective by less than this many nats per point.
    max_iter : int
        At most this many steps.
    max_components : int
        The largest K that n_components="auto" tries.
    robust : bool
        Fit as the trainer does (`mixture.robust`): points beyond the fence and the farthest
        few are left out and refitted without (`excluded_`); False fits every point, as
        scikit-learn does.
    warm_start : bool
        A second `fit` starts from the fitted model (when K and D agree), as the trainer's
        refits do.
    random_state : int, RandomState or None
        Seeds the fit's JAX key and `sample`.

    Missing values (NaN in X) are marginalised out in `predict`, `predict_proba` and
    `score_samples` for every covariance type, and in `fit` for the diagonal types; full and
    tied covariances fit the rows with every coordinate (as the trainer does). Rows with no
    observed value are an error.
    """

    def __init__(
        self,
        n_components: int | str = 1,
        *,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        n_init: int = 1,
        init_params: str = "k-means++",
        priors: str = "data",
        tol: float = 1e-5,
        max_iter: int = 200,
        max_components: int = DEFAULT_MAX_COMPONENTS,
        robust: bool = False,
        warm_start: bool = False,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.init_params = init_params
        self.priors = priors
        self.tol = tol
        self.max_iter = max_iter
        self.max_components = max_components
        self.robust = robust
        self.warm_start = warm_start
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # missing coordinates are marginalised
        return tags

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> MapGaussianMixture:
        """Fits the MAP globals to X (n_samples, n_features); y is ignored."""
        config, auto = self._config()
        x = validate_data(
            self, X, dtype=np.float64, ensure_all_finite="allow-nan", ensure_min_samples=2
        )
        if not auto and len(x) < config.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{config.n_components}, n_samples = {len(x)}"
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        key = jax.random.PRNGKey(seed)
        warm = self._warm_start_params(x.shape[1], None if auto else config.n_components)
        excluded: dict[str, int] = {}
        bics: dict[int, float] | None = None
        if self.robust:
            fitted = fit_robust(
                x,
                key,
                config,
                max_components=self.max_components if auto else None,
                warm_start=warm,
            )
            result, excluded, bics = fitted.result, fitted.excluded, fitted.bics
        elif auto:
            selection = fit_auto(x, key, config, self.max_components, warm_start=warm)
            result, bics = selection.result, selection.bics
        else:
            result = fit_map(x, key, config, warm_start=warm)
        self._set_fitted(result, config.covariance, warm is not None)
        self.excluded_ = excluded
        if bics is not None:
            self.bics_ = dict(bics)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fits to X and returns the component of each of its rows."""
        return self.fit(X).predict(X)

    def _config(self) -> tuple[FitConfig, bool]:
        """The FitConfig of the parameters, and whether K is chosen by BIC; ValueError (one
        line, naming the parameter) for values out of range."""
        auto = isinstance(self.n_components, str) and self.n_components == "auto"
        if not auto and not _is_int(self.n_components, 1):
            raise ValueError(
                f"n_components must be an integer >= 1 or 'auto', got {self.n_components!r}"
            )
        if self.covariance_type not in COVARIANCES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCES}, got {self.covariance_type!r}"
            )
        if self.init_params not in INIT_PARAMS:
            raise ValueError(
                f"init_params must be one of {tuple(INIT_PARAMS)}, got {self.init_params!r}"
            )
        if self.priors not in ("data", "seed"):
            raise ValueError(f"priors must be 'data' or 'seed', got {self.priors!r}")
        for name in ("n_init", "max_iter", "max_components"):
            if not _is_int(getattr(self, name), 1 if name != "max_iter" else 2):
                low = 2 if name == "max_iter" else 1
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if not (_is_real(self.reg_covar) and 0 <= self.reg_covar < 1):
            raise ValueError(f"reg_covar must be in [0, 1), got {self.reg_covar!r}")
        if not (_is_real(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        config = FitConfig(
            n_components=1 if auto else int(self.n_components),
            covariance=check_covariance(self.covariance_type),
            reg_covar=float(self.reg_covar),
            priors=self.priors,  # type: ignore[arg-type]
            init=INIT_PARAMS[self.init_params],  # type: ignore[arg-type]
            n_init=int(self.n_init),
            n_best=int(self.n_init),
            warm_tol=float(self.tol),
            refit_tol=float(self.tol),
            tol=float(self.tol),
            em_max_steps=int(self.max_iter),
            max_steps=int(self.max_iter),
        )
        return config, auto

    def _warm_start_params(self, dim: int, k: int | None) -> MixtureParams | None:
        if not self.warm_start or not hasattr(self, "params_"):
            return None
        params: MixtureParams = self.params_
        if params.dim != dim or (k is not None and params.n_components != k):
            return None
        if self.covariance_ != check_covariance(self.covariance_type):
            return None
        return params

    def _set_fitted(self, result: FitResult, covariance: str, warm: bool) -> None:
        params = result.params if warm else order_by_location(result.params)
        self._set_params_arrays(params, covariance)
        n = max(result.n_points, 1)
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_steps)
        # The MAP objective per point (log-likelihood plus log prior, over the points fitted).
        self.lower_bound_ = float(-result.final_loss / n)
        self.lower_bounds_ = [float(-v / n) for v in np.asarray(result.losses)]
        self.fit_result_ = result

    def _set_params_arrays(self, params: MixtureParams, covariance: str) -> None:
        params = MixtureParams(*(np.asarray(a, np.float64) for a in params))
        arrays = to_sklearn_arrays(params, covariance)
        self.params_ = params
        self.covariance_ = covariance
        self.n_components_ = params.n_components
        self.weights_ = arrays.weights
        self.means_ = arrays.means
        self.covariances_ = arrays.covariances
        self.precisions_cholesky_ = arrays.precisions_cholesky
        self.precisions_ = arrays.precisions

    # -- using a fitted model ---------------------------------------------------------------

    def _points(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "params_")
        x = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        empty = np.isnan(x).all(axis=1)
        if empty.any():
            raise ValueError(f"X has {int(empty.sum())} row(s) with no observed value")
        return x

    def _log_joint(self, X: Any) -> np.ndarray:
        """log w_k + log N(x | k) per row and component, marginal over missing coordinates."""
        x = self._points(X)
        return np.log(self.params_.weights) + component_log_pdf(x, self.params_)

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) of each row (float64)."""
        return logsumexp(self._log_joint(X), axis=1)

    def score(self, X: Any, y: Any = None) -> float:
        """The mean log-likelihood per row."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(component | x) of each row, (n_samples, K)."""
        joint = self._log_joint(X)
        return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component of each row (what the worker assigns at temperature 0)."""
        return np.argmax(self._log_joint(X), axis=1)

    def _n_parameters(self) -> int:
        return n_free_parameters(self.params_, self.covariance_)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (free parameters counted as scikit-learn does)."""
        x = self._points(X)
        return float(-2 * self.score(x) * len(x) + self._n_parameters() * np.log(len(x)))

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X."""
        x = self._points(X)
        return float(-2 * self.score(x) * len(x) + 2 * self._n_parameters())

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """n_samples draws from the mixture and their components, grouped by component as
        scikit-learn's are; random_state seeds them."""
        check_is_fitted(self, "params_")
        if not _is_int(n_samples, 1):
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.params_.weights / self.params_.weights.sum())
        chol = cholesky_factors(self.params_.scale, self.params_.n_components)
        parts, labels = [], []
        for k, count in enumerate(counts):
            z = rng.standard_normal((count, self.params_.dim))
            parts.append(self.params_.locs[k] + z @ chol[k].T)
            labels.append(np.full(count, k))
        return np.concatenate(parts), np.concatenate(labels)

    # -- moving models ----------------------------------------------------------------------

    def to_params(self, version: int = 0) -> ModelParams:
        """The fitted model as a `gmm-params/2` record (`ModelParams`; `.dumps()` is its JSON):
        what `gmm-trainer publish --params FILE` publishes and the worker serves."""
        check_is_fitted(self, "params_")
        result = getattr(self, "fit_result_", None)
        fitted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if result is not None:
            result = result._replace(params=self.params_)
            return to_model_params(
                result, version, result.n_points, fitted_at, source="MapGaussianMixture"
            )
        return ModelParams(version, self.params_, covariance=self.covariance_)

    @classmethod
    def from_params(cls, model: ModelParams | str | bytes | os.PathLike[str]) -> MapGaussianMixture:
        """A fitted estimator serving a params record: a `ModelParams`, its JSON text (a string
        that starts with "{"), or the path of a file holding it (validated as a worker validates
        it: `mixture.params.ParamsError` says why not)."""
        is_text = isinstance(model, bytes) or (
            isinstance(model, str) and model.lstrip().startswith("{")
        )
        if not is_text and not isinstance(model, ModelParams):
            with open(model, "rb") as f:
                model = f.read()
        if not isinstance(model, ModelParams):
            model = ModelParams.loads(model)  # type: ignore[arg-type]
        covariance = str(model.covariance)
        return cls._of(model.mixture, covariance)

    @classmethod
    def from_gaussian_mixture(cls, gm: Any) -> MapGaussianMixture:
        """A fitted estimator with a fitted `sklearn.mixture.GaussianMixture`'s parameters."""
        params, covariance = from_gaussian_mixture(gm)
        est = cls._of(params, covariance)
        est.converged_ = bool(getattr(gm, "converged_", True))
        est.n_iter_ = int(getattr(gm, "n_iter_", 0))
        est.lower_bound_ = float(getattr(gm, "lower_bound_", -np.inf))
        return est

    def to_gaussian_mixture(self, **kwargs: Any) -> Any:
        """A fitted `sklearn.mixture.GaussianMixture` with these parameters (tied-diag goes out as
        diag); kwargs: its other constructor parameters."""
        check_is_fitted(self, "params_")
        return to_gaussian_mixture(self.params_, self.covariance_, **kwargs)

    @classmethod
    def _of(cls, params: MixtureParams, covariance: str) -> MapGaussianMixture:
        # Validated as a worker validates what it reads: through the record's JSON.
        ModelParams.loads(ModelParams(0, params, covariance=covariance).dumps())
        est = cls(params.n_components, covariance_type=covariance)
        est._set_params_arrays(params, covariance)
        est.n_features_in_ = params.dim
        est.converged_ = True
        est.n_iter_ = 0
        est.lower_bound_ = -np.inf
        return est


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and bool(np.isfinite(float(value)))
    )
