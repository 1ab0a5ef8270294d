"""One trainer cycle: read the window -> fit -> check -> publish (and report).

A fit is published only if it passes every guard (`mixture.guards`); otherwise the reason is
logged and counted and the current model keeps serving. Each cycle starts from the newest
version of the trainer's model name on the params topic (a rollback or a CLI publication
included), and publishing takes the next version compare-and-set (`params_topic.Publisher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib
from typing import NamedTuple

import jax
import numpy as np

from kafka_common import params_topic
from kafka_common.events import send_event
from mixture import guards
from mixture.evaluate import Score, log_likelihood, score
from mixture.fit import DataError, FitConfig, FitResult, fit_compilations, to_model_params
from mixture.labels import align_components, order_by_location
from mixture.params import ModelParams, ParamsError
from mixture.posterior import posterior_nuts
from mixture.robust import RobustFit, beyond_cut, fit_robust
from trainer.events import CandidateDigest, ShadowTally
from trainer.metrics import TrainerMetrics
from trainer.peak_memory import PeakRss
from trainer.reader_pool import ReaderPool
from trainer.report import prune_reports, write_posterior_report, write_report
from trainer.settings import TrainerSettings
from trainer.window import Window, read_window
from wire.event import Event
from wire.shadow_report import ShadowTotals

log = logging.getLogger(__name__)


class CycleOutcome(NamedTuple):
    published: ModelParams | None
    reason: str | None  # why nothing was published
    detail: str
    window: int  # valid points
    invalid: dict[str, int]
    fit_seconds: float | None
    report: pathlib.Path | None
    #: Valid points the fit left out, per reason (mixture.robust); they are still served.
    excluded: dict[str, int] | None = None

    def summary(self) -> dict:
        return {
            "published": self.published is not None,
            "version": self.published.version if self.published else None,
            "reason": self.reason,
            "detail": self.detail,
            "window": self.window,
            "invalid": self.invalid,
            "fit_seconds": self.fit_seconds,
            "excluded": dict(self.excluded or {}),
            "report": str(self.report) if self.report else None,
        }


class Fitted(NamedTuple):
    """A fit that passed its checks, labels aligned with the current model's."""

    result: FitResult
    score: Score  # on the points the fit kept
    bics: dict[int, float] | None
    kept: np.ndarray  # (N,) which of the window's points the fit used
    excluded: dict[str, int]


class Trainer:
    """Refits and publishes one model name; holds the newest version of that name."""

    def __init__(
        self,
        settings: TrainerSettings,
        metrics: TrainerMetrics,
        readers: ReaderPool | None = None,
    ) -> None:
        """readers: window readers started ahead of each read (GMM_TRAIN_READERS > 1; the run
        loop refills it after each cycle); None: each read starts its own."""
        self.settings = settings
        self.metrics = metrics
        self.readers = readers
        self.current: ModelParams | None = None
        #: The name's candidate in shadow (GMM_PROMOTION=shadow), until promoted or rejected.
        self.candidate: ModelParams | None = None
        #: The candidate's digest (`wire.shadow_report.model_digest`): only the workers' reports
        #: that carry it count for the candidate.
        self.candidate_digest = CandidateDigest()
        #: The NUTS run of the last published version, if any (it never delays publication).
        self.posterior_task: asyncio.Task | None = None
        #: Most resident memory during the last fit (`trainer.peak_memory`), for its report.
        self.fit_peak_rss: PeakRss | None = None
        self.config = FitConfig(
            n_components=settings.n_components or 1,
            covariance=settings.fit_covariance,
            reg_covar=settings.reg_covar,
            n_init=settings.restarts,
        )
        self.publisher = params_topic.Publisher.from_settings(settings)

    @property
    def version(self) -> int:
        return self.current.version if self.current else 0

    async def load_current(self) -> None:
        """The newest valid model of the name on the params topic (what serves now), and its
        candidate in shadow if there is one; re-asserts them (`Publisher.reassert`) when a
        refused record is the last of one of its keys."""
        s = self.settings
        tail = await params_topic.read_tail(
            s.kafka, s.params_topic, s.model_name, self.publisher.verifier
        )
        self.current, self.candidate = tail.state.newest, tail.state.candidate
        # A replay or forgery is the last record of a key: write the current ones again
        # before compaction could leave it alone there. Best effort: a failure must not stop
        # the refits (the next cycle tries again).
        if tail.spoiled & tail.latest.keys():
            try:
                if await self.publisher.reassert():
                    self.metrics.params_reasserted.inc()
            except Exception as exc:
                log.warning("could not write %r's current records again: %s", s.model_name, exc)
        if self.current is not None:
            self.metrics.published_version.set(self.current.version)

    async def cycle(self) -> CycleOutcome:
        await self.load_current()
        # A candidate is judged by the workers' scores between cycles (judge_candidate); here
        # only its time limit, so that `run --once` (cron) cannot wait on it for ever.
        pending = self.candidate is not None and self.settings.promotion == "shadow"
        if pending and not await self._expire_candidate() and self.candidate is not None:
            detail = f"candidate version {self.candidate.version} is still scored in shadow"
            log.info("not refitting: %s", detail)
            return CycleOutcome(None, "candidate_pending", detail, 0, {}, None, None)
        window = await self.read()
        n = len(window.points)
        needed = self.settings.needed_points
        if n < needed:
            rejection = guards.Rejection(
                "too_few_points", f"{n} valid point(s) in the window, at least {needed} needed"
            )
            return self._rejected(rejection, window)
        warm = self._warm_start()
        # fold_in takes a uint32: versions beyond it (valid, if unlikely) wrap around.
        key = jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), (self.version + 1) % 2**32)
        fitted = await self.fit(window.points, key, warm)
        if isinstance(fitted, guards.Rejection):
            return self._rejected(fitted, window)
        checked = self.check(fitted, window.points, warm)
        if isinstance(checked, guards.Rejection):
            return self._rejected(checked, window, fitted.result.seconds, fitted.excluded)
        return await self.publish(checked, window, key)

    async def read(self) -> Window:
        """The window of recent valid points (invalid records are counted and skipped)."""
        s = self.settings
        dim = self.current.mixture.dim if self.current else None
        window = await read_window(
            s.kafka,
            s.input_topic,
            s.window_records,
            s.window_seconds,
            dim,
            s.max_record_bytes,
            readers=s.window_readers,
            pool=self.readers,
        )
        for reason, count in window.invalid.items():
            self.metrics.invalid_records.labels(reason=reason).inc(count)
        self.metrics.window_records.set(len(window.points))
        return window

    async def fit(
        self, points: np.ndarray, key: jax.Array, warm: ModelParams | None
    ) -> RobustFit | guards.Rejection:
        """The MAP fit of the points the robust rules keep (K chosen by BIC for
        GMM_COMPONENTS=auto), off the event loop; the points left out are counted by reason."""
        warm_mixture = warm.mixture if warm is not None else None
        # Counted in versions, so that a trainer run by cron (`run --once`) explores too.
        every = self.settings.explore_every
        explore = warm is not None and every > 0 and (self.version + 1) % every == 0
        s = self.settings
        try:
            with PeakRss() as peak:
                fitted = await asyncio.to_thread(
                    fit_robust,
                    points,
                    key,
                    self.config,
                    max_components=s.max_components if s.n_components is None else None,
                    warm_start=warm_mixture,
                    explore=explore,
                )
        except DataError as exc:
            return guards.Rejection(exc.reason, str(exc))
        except Exception as exc:  # a numerical failure of this window: the next cycle retries
            log.exception("the fit failed")
            return guards.Rejection("fit_failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.count_compilations(fit_compilations())
        result = fitted.result
        self.metrics.fits.inc()
        self.metrics.fit_seconds.observe(result.seconds)
        # The window's points over every round's seconds (a robust fit refits what it keeps).
        self.metrics.fit_points_per_second.set(len(points) / max(result.seconds, 1e-9))
        self.metrics.fit_peak_rss_bytes.set(peak.bytes)
        self.fit_peak_rss = peak
        self.metrics.final_loss.set(result.final_loss)
        for reason, count in fitted.excluded.items():
            self.metrics.excluded_points.labels(reason=reason).inc(count)
        if fitted.n_excluded:
            log.info("the fit left out %s of %d points", fitted.excluded, len(points))
        return fitted

    def check(
        self, fitted: RobustFit, points: np.ndarray, warm: ModelParams | None
    ) -> Fitted | guards.Rejection:
        """The publish guards; labels aligned with the current model's on success.

        The collapse check and the fit's score see the points the fit kept; the regression
        guard compares both models on the whole window, by a trimmed mean that glitches cannot
        move (`guards.check_not_worse`)."""
        s = self.settings
        result = fitted.result
        params = result.params
        kept = points[fitted.kept]
        rejection = guards.check_finite(params, result.final_loss) or guards.check_not_collapsed(
            params, kept, s.min_weight
        )
        if rejection is not None:
            return rejection
        # Scored once: aligning labels permutes components and leaves the score unchanged.
        fit_score = score(kept, params, result.covariance)
        # Judged against the served model whenever the window is its dimension, warm start or
        # not: a model of another K or covariance type (a new GMM_COMPONENTS, or one published
        # from a file) is not replaced unjudged.
        current = self.current
        reference = warm or (current if current and current.mixture.dim == params.dim else None)
        if reference is not None:
            left_out = points[~fitted.kept]
            explained = (
                int((~beyond_cut(left_out, reference.mixture)).sum()) if len(left_out) else 0
            )
            rejection = guards.check_keeps_explained(explained, len(points)) or (
                guards.check_not_worse(
                    log_likelihood(points, params),
                    log_likelihood(points, reference.mixture),
                    s.max_loss_regression,
                )
            )
            if rejection is not None:
                return rejection
            params = align_components(params, reference.mixture)
        else:
            params = order_by_location(params)
        return Fitted(
            result._replace(params=params), fit_score, fitted.bics, fitted.kept, fitted.excluded
        )

    async def publish(self, fitted: Fitted, window: Window, key: jax.Array) -> CycleOutcome:
        """Publishes the next version (compare-and-set), then writes its report."""
        s = self.settings
        result, fit_score, bics, kept, excluded = fitted
        n = len(window.points)
        fitted_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            model = to_model_params(
                result,
                0,  # the publisher assigns the version
                n,
                fitted_at,
                aic=fit_score.aic,
                bic=fit_score.bic,
                mean_log_likelihood=fit_score.mean_log_likelihood,
                excluded_points=excluded,
                **({"bic_by_components": {str(k): v for k, v in bics.items()}} if bics else {}),
            )
        except ParamsError as exc:  # e.g. beyond what a worker can serve
            return self._rejected(guards.Rejection("unservable", str(exc)), window, result.seconds)
        # In shadow mode a refit is a candidate until workers have scored it (a first model
        # has nothing to be compared with: it serves at once).
        stage = "candidate" if s.promotion == "shadow" and self.current is not None else "served"
        # Compare-and-set against what the fit was judged with: a version published meanwhile
        # (`gmm-trainer publish`, a rollback) is not overtaken; the next cycle refits from it.
        expect = (self.version, self.candidate.version if self.candidate else None)
        try:
            model = await self.publisher.publish(model, "trainer", stage=stage, expect=expect)
        except params_topic.StaleState as exc:
            rejection = guards.Rejection("superseded", f"not published: {exc}")
            return self._rejected(rejection, window, result.seconds)
        if stage == "served":
            self.current = model
            self.metrics.published_version.set(model.version)
        else:
            self.candidate = model
            self.metrics.candidate_version.set(model.version)
        log.info(
            "published %r version %d as %s (%d points, %.2fs)",
            s.model_name,
            model.version,
            stage,
            n,
            result.seconds,
        )
        reports = pathlib.Path(s.reports_dir) / s.model_name
        report = await asyncio.to_thread(
            write_report,
            reports / f"v{model.version}",
            model,
            result,
            window.points[kept],
            fit_score,
            excluded,
            self.fit_peak_rss.bytes if self.fit_peak_rss else None,
            self.fit_peak_rss.exact if self.fit_peak_rss else None,
        )
        await asyncio.to_thread(prune_reports, reports, s.reports_keep)
        if s.posterior == "nuts":
            self.posterior_task = asyncio.create_task(
                asyncio.to_thread(
                    self._posterior, model, report, window.points[kept], jax.random.fold_in(key, 1)
                )
            )
        return CycleOutcome(
            model, None, "published", n, dict(window.invalid), result.seconds, report, excluded
        )

    async def judge_candidate(self, tally: ShadowTally) -> str | None:
        """Promotes or rejects the candidate once the workers' shadow scores suffice (or its
        time is up); returns what was done ("promoted", "rejected") or None (still pending)."""
        s, candidate, current = self.settings, self.candidate, self.current
        if candidate is None or current is None:
            return None
        totals = tally.totals(candidate.version, current.version, self.candidate_digest(candidate))
        self.metrics.shadow_records.set(totals.records)
        verdict = guards.check_shadow(
            totals.records,
            totals.clipped_difference_sum,
            s.shadow_records,
            s.shadow_tolerance,
            difference=totals.difference,
        )
        if verdict == guards.PENDING and _age_seconds(candidate) > s.shadow_timeout_seconds:
            verdict = self._timeout(totals.records)
        if verdict == guards.PENDING:
            return None
        try:
            done = await self._decide(candidate, current, verdict, totals)
        except params_topic.StaleState as exc:
            # A rollback or another publication superseded it (and withdrew it), or this very
            # decision already went through: nothing more to do with this candidate.
            log.warning("candidate %d not decided: %s", candidate.version, exc)
            done = "superseded"
        tally.forget(candidate.version)
        self.candidate = None
        self.metrics.candidate_version.set(float("nan"))
        return done

    async def _decide(
        self,
        candidate: ModelParams,
        current: ModelParams,
        verdict: str | guards.Rejection,
        totals: ShadowTotals,
    ) -> str:
        # The verdict's statistic is the clipped mean it was taken on (a glitch can give the plain
        # difference the other sign); the detail gives the plain one too.
        difference = totals.clipped_difference
        if isinstance(verdict, guards.Rejection):
            await self.publisher.withdraw_candidate(candidate.version)
            self.metrics.rejected.labels(reason=verdict.reason).inc()
            log.warning("candidate %d rejected: %s", candidate.version, verdict.detail)
            await self._event("rejected", candidate.version, difference, verdict.detail)
            return "rejected"
        else:
            promoted = await self.publisher.publish(
                candidate,
                "trainer",
                expect=(current.version, candidate.version),
                promoted_from=candidate.version,
            )
            self.current = promoted
            self.metrics.published_version.set(promoted.version)
            detail = (
                f"candidate {candidate.version} promoted as version {promoted.version}: "
                f"clipped mean log-likelihood difference {difference:+.4f} nats per record vs the "
                f"served model over {totals.records} records (unclipped mean "
                f"{totals.difference:+.4g}), MAP agreement {totals.agreement:.3f}"
            )
            log.info("%s", detail)
            await self._event("promoted", promoted.version, difference, detail)
            return "promoted"

    def _timeout(self, records: int) -> guards.Rejection:
        s = self.settings
        return guards.Rejection(
            "shadow_timeout",
            f"{records} of {s.shadow_records} records scored in {s.shadow_timeout_seconds:.0f} s",
        )

    async def _expire_candidate(self) -> bool:
        """Rejects the candidate if its time is up; True if it was (or is gone anyway)."""
        candidate = self.candidate
        if candidate is None:
            return True
        if _age_seconds(candidate) <= self.settings.shadow_timeout_seconds:
            return False
        rejection = self._timeout(0)
        with contextlib.suppress(params_topic.StaleState):  # gone already
            await self.publisher.withdraw_candidate(candidate.version)
        self.metrics.rejected.labels(reason=rejection.reason).inc()
        log.warning("candidate %d rejected: %s", candidate.version, rejection.detail)
        await self._event("rejected", candidate.version, 0.0, rejection.detail)
        self.candidate = None
        return True

    async def _event(self, kind: str, version: int, statistic: float, detail: str) -> None:
        topic = self.settings.events_topic
        if not topic:
            return
        try:
            await send_event(
                self.settings.kafka,
                topic,
                Event.now(kind, self.settings.model_name, version, statistic, detail=detail),
            )
        except Exception as exc:  # an event is information: the decision stands without it
            log.warning("could not send the %s event: %s", kind, exc)

    def _warm_start(self) -> ModelParams | None:
        """The current model, if it can warm-start the refit (auto K: any K can)."""
        current, k = self.current, self.settings.n_components
        if current is None or current.covariance != self.settings.fit_covariance:
            return None
        return current if k is None or current.mixture.n_components == k else None

    def _rejected(
        self,
        rejection: guards.Rejection,
        window: Window,
        seconds: float | None = None,
        excluded: dict[str, int] | None = None,
    ) -> CycleOutcome:
        log.warning("not publishing: %s (%s)", rejection.reason, rejection.detail)
        self.metrics.rejected.labels(reason=rejection.reason).inc()
        n = len(window.points)
        return CycleOutcome(
            None,
            rejection.reason,
            rejection.detail,
            n,
            dict(window.invalid),
            seconds,
            None,
            excluded,
        )

    def _posterior(
        self, model: ModelParams, report: pathlib.Path, points: np.ndarray, key: jax.Array
    ) -> None:
        try:
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


#: How far in the future a model's fitted_at may lie (another host's clock) and still be timed.
CLOCK_SKEW_SECONDS = 300.0


def _age_seconds(model: ModelParams) -> float:
    """Seconds since the model was fitted; infinite if that is unknown, not a time or in the
    future beyond clock skew (such a candidate cannot be timed, so it times out at once rather
    than never)."""
    fitted = model.metadata.fitted_at
    try:
        at = dt.datetime.fromisoformat(fitted)  # type: ignore[arg-type]
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        age = (dt.datetime.now(dt.UTC) - at).total_seconds()
        return age if age > -CLOCK_SKEW_SECONDS else float("inf")
    except (TypeError, ValueError, OverflowError):
        return float("inf")
