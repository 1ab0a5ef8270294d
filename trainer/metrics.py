"""The trainer's metrics, on one registry (served at /metrics on GMM_TRAINER_METRICS_PORT).

Fit seconds are bucketed from 50 ms (a warm refit of a small window) to 10 minutes (a cold fit
of a large one).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Every reason a fit is rejected for (mixture.guards, mixture.fit.DataError, trainer.cycle).
#: Their series start at 0, so an alert's increase() counts the first rejection too (a series
#: born at 1 shows no increase).
REJECTION_REASONS = (
    "too_few_points",
    "not_finite",
    "collapsed",
    "worse_than_current",
    "left_out_explained",
    "fit_failed",
    "unservable",
    "invalid_data",
    "zero_variance",
    "out_of_range",
    "shadow_timeout",
    "worse_in_shadow",
    "superseded",
)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, model: str = "gmm") -> None:
        r = self.registry = registry or CollectorRegistry()
        self.model_info = Gauge(
            "gmm_model_info",
            "1, labelled with the model name this trainer fits (alerts join on it)",
            ["model"],
            registry=r,
        )
        self.model_info.labels(model=model).set(1)
        self.fits = Counter("gmm_trainer_fits_total", "Fits run", registry=r)
        self.fit_seconds = Histogram(
            "gmm_trainer_fit_seconds", "Duration of a fit", buckets=FIT_BUCKETS, registry=r
        )
        self.fit_points_per_second = Gauge(
            "gmm_trainer_fit_points_per_second",
            "Window points per second of the last fit (every robust round counted in its seconds)",
            registry=r,
        )
        self.fit_peak_rss_bytes = Gauge(
            "gmm_trainer_fit_peak_rss_bytes",
            "Most resident memory the trainer process held during the last fit (the whole "
            "process: a posterior run on another thread counts too)",
            registry=r,
        )
        self.final_loss = Gauge(
            "gmm_trainer_final_loss", "Final loss (negative log joint) of the last fit", registry=r
        )
        self.window_records = Gauge(
            "gmm_trainer_window_records", "Valid points in the last window", registry=r
        )
        self.published_version = Gauge(
            "gmm_trainer_published_version", "Version of the last published model", registry=r
        )
        self.rejected = Counter(
            "gmm_trainer_rejected_fits_total",
            "Fits not published, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason=reason)
        self.invalid_records = Counter(
            "gmm_trainer_invalid_records_total",
            "Invalid input records skipped, by reason",
            ["reason"],
            registry=r,
        )
        self.excluded_points = Counter(
            "gmm_trainer_fit_excluded_points_total",
            "Valid points a fit left out (mixture.robust), by reason: beyond_fence, implausible "
            "(still served)",
            ["reason"],
            registry=r,
        )
        self.compilations = Counter(
            "gmm_trainer_compilations_total",
            "Fit programs traced and compiled (steady once every padded window size and K has "
            "been seen; a rise every cycle means refits recompile)",
            registry=r,
        )
        self._compilations_seen = 0
        self.candidate_version = Gauge(
            "gmm_trainer_candidate_version",
            "Version of the candidate scored in shadow (NaN: none)",
            registry=r,
        )
        self.candidate_version.set(float("nan"))
        self.shadow_records = Gauge(
            "gmm_trainer_shadow_records",
            "Records the workers have scored the candidate on so far",
            registry=r,
        )
        self.drift_alarms = Counter(
            "gmm_trainer_drift_alarms_total",
            "Drift alarms received about the served version (each asks for a refit)",
            registry=r,
        )
        self.events_refused = Counter(
            "gmm_trainer_events_refused_total",
            "Events ignored, by reason: invalid, unsigned, bad_signature (GMM_EVENTS_VERIFY_KEY), "
            "malformed, other_candidate, no_digest or too_many_reporters (shadow reports), "
            "stale, future or duplicate (drift alarms)",
            ["reason"],
            registry=r,
        )
        self.cycle_errors = Counter(
            "gmm_trainer_cycle_errors_total",
            "Cycles that failed (e.g. broker unreachable) and will retry",
            registry=r,
        )
        self.params_reasserted = Counter(
            "gmm_trainer_params_reasserted_total",
            "Times the model's current records were written again because the last record of "
            "one of its params topic keys was refused (replayed or forged)",
            registry=r,
        )

    def count_compilations(self, total: int) -> None:
        """Advances the compilations counter to the process's running total."""
        if total > self._compilations_seen:
            self.compilations.inc(total - self._compilations_seen)
            self._compilations_seen = total
