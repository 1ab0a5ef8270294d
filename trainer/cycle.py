"""One trainer cycle: read the window, fit, check, align labels, publish, report.

A fit is published only if it passes every guard; otherwise the reason is logged and counted
and the current model keeps serving. Versions increase strictly, across restarts too (the
trainer starts from the newest version on the params topic).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pathlib
from typing import NamedTuple

import jax
import numpy as np

from kafka_common import params_topic
from mixture.evaluate import score
from mixture.fit import DataError, FitConfig, fit_compilations, fit_map, to_model_params
from mixture.labels import align_components, component_sds, order_by_location
from mixture.params import ModelParams, ParamsError
from mixture.posterior import posterior_nuts
from mixture.select import fit_auto
from trainer.metrics import TrainerMetrics
from trainer.report import write_posterior_report, write_report
from trainer.settings import TrainerSettings
from trainer.window import read_window

log = logging.getLogger(__name__)


class CycleOutcome(NamedTuple):
    published: ModelParams | None
    reason: str | None  # why nothing was published
    detail: str
    window: int  # valid points
    invalid: dict[str, int]
    fit_seconds: float | None
    report: pathlib.Path | None

    def summary(self) -> dict:
        return {
            "published": self.published is not None,
            "version": self.published.version if self.published else None,
            "reason": self.reason,
            "detail": self.detail,
            "window": self.window,
            "invalid": self.invalid,
            "fit_seconds": self.fit_seconds,
            "report": str(self.report) if self.report else None,
        }


class Trainer:
    """Refits and publishes; holds the current model and the last version published."""

    def __init__(self, settings: TrainerSettings, metrics: TrainerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current: ModelParams | None = None
        self.version = 0
        #: The NUTS run of the last published version, if any (it never delays publication).
        self.posterior_task: asyncio.Task | None = None
        self.config = FitConfig(
            n_components=settings.n_components or 1,
            covariance=settings.fit_covariance,
            reg_covar=settings.reg_covar,
            n_init=settings.restarts,
        )

    async def load_current(self) -> None:
        """The newest valid model on the params topic; its version is where numbering resumes."""
        self.current = await params_topic.read_newest(
            self.settings.kafka, self.settings.params_topic
        )
        self.version = self.current.version if self.current else 0
        if self.current is not None:
            self.metrics.published_version.set(self.version)

    async def cycle(self) -> CycleOutcome:
        s = self.settings
        dim = self.current.mixture.dim if self.current else None
        window = await read_window(
            s.kafka, s.input_topic, s.window_records, s.window_seconds, dim, s.max_record_bytes
        )
        for reason, count in window.invalid.items():
            self.metrics.invalid_records.labels(reason=reason).inc(count)
        points = window.points
        n = len(points)
        self.metrics.window_records.set(n)
        invalid = dict(window.invalid)

        def reject(reason: str, detail: str, seconds: float | None = None) -> CycleOutcome:
            log.warning("not publishing: %s (%s)", reason, detail)
            self.metrics.rejected.labels(reason=reason).inc()
            return CycleOutcome(None, reason, detail, n, invalid, seconds, None)

        if n < s.needed_points:
            return reject(
                "too_few_points",
                f"{n} valid point(s) in the window, at least {s.needed_points} needed",
            )
        warm = None
        if self.current is not None and self._same_shape(self.current):
            warm = self.current.mixture
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed), self.version + 1)
        bics: dict[int, float] | None = None
        try:
            if s.n_components is None:
                selection = await asyncio.to_thread(
                    fit_auto, points, key, self.config, s.max_components, warm_start=warm
                )
                result, bics = selection.result, selection.bics
            else:
                result = await asyncio.to_thread(fit_map, points, key, self.config, warm_start=warm)
        except DataError as exc:
            return reject(exc.reason, str(exc))
        except Exception as exc:  # a numerical failure of this window: the next cycle retries
            log.exception("the fit failed")
            return reject("fit_failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.count_compilations(fit_compilations())
        self.metrics.fits.inc()
        self.metrics.fit_seconds.observe(result.seconds)
        self.metrics.final_loss.set(result.final_loss)

        params = result.params
        if not all(np.all(np.isfinite(np.asarray(a))) for a in params) or not np.isfinite(
            result.final_loss
        ):
            return reject("not_finite", "the fit produced NaN or infinity", result.seconds)
        spread = np.nanstd(points, axis=0)
        if np.min(params.weights) < s.min_weight or np.any(component_sds(params) < 1e-6 * spread):
            return reject(
                "collapsed",
                f"a component collapsed (weights {np.round(params.weights, 4)})",
                result.seconds,
            )
        # Scored once: aligning labels permutes components and leaves the score unchanged.
        fit_score = score(points, params, result.covariance)
        if warm is not None:
            params = align_components(params, warm)
            current_ll = score(points, warm).mean_log_likelihood
            new_ll = fit_score.mean_log_likelihood
            if new_ll < current_ll - s.max_loss_regression:
                return reject(
                    "worse_than_current",
                    f"mean log-likelihood {new_ll:.4f} vs the current model's {current_ll:.4f}",
                    result.seconds,
                )
        else:
            params = order_by_location(params)
        result = result._replace(params=params)

        version = self.version + 1
        fitted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            model = to_model_params(
                result,
                version,
                n,
                fitted_at,
                model_name=s.model_name,
                aic=fit_score.aic,
                bic=fit_score.bic,
                mean_log_likelihood=fit_score.mean_log_likelihood,
                **({"bic_by_components": {str(k): v for k, v in bics.items()}} if bics else {}),
            )
        except ParamsError as exc:  # e.g. beyond what a worker can serve
            return reject("unservable", str(exc), result.seconds)
        await params_topic.publish(s.kafka, s.params_topic, model, s.model_name)
        self.current, self.version = model, version
        self.metrics.published_version.set(version)
        log.info("published model version %d (%d points, %.2fs)", version, n, result.seconds)
        report = await asyncio.to_thread(
            write_report,
            pathlib.Path(s.reports_dir) / s.model_name / f"v{version}",
            model,
            result,
            points,
            fit_score,
        )
        if s.posterior == "nuts":
            self.posterior_task = asyncio.create_task(
                asyncio.to_thread(self._posterior, report, points, jax.random.fold_in(key, 1))
            )
        return CycleOutcome(model, None, "published", n, invalid, result.seconds, report)

    def _posterior(self, report: pathlib.Path, points: np.ndarray, key: jax.Array) -> None:
        try:
            model = self.current
            assert model is not None
            posterior = posterior_nuts(
                points,
                key,
                model.mixture.n_components,
                str(model.covariance),
                reg_covar=self.settings.reg_covar,
            )
            write_posterior_report(report, posterior)
            log.info("posterior written to %s (%d divergences)", report, posterior.divergences)
        except Exception:  # a diagnostic: it must never take the trainer down
            log.exception("the NUTS posterior failed")

    def _same_shape(self, model: ModelParams) -> bool:
        """Whether the current model can warm-start the refit (auto K: any K can)."""
        k = self.settings.n_components
        return model.covariance == self.settings.fit_covariance and (
            k is None or model.mixture.n_components == k
        )
