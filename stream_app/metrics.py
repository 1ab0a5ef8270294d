"""Every metric the worker exports, on one registry (Faust's sensor joins it: faust_sensor.py).

Units are in the names; buckets are chosen for what each one measures: batch sizes in powers of
two up to the largest batch, inference from 100 us (a warm small batch) to 1 s, end-to-end from
5 ms (the batching delay) to 10 s (a backlog after a restart).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import math
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mixture.params import ModelParams

INFERENCE_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
END_TO_END_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batches in the drift signal's window.
DRIFT_WINDOW_BATCHES = 50
#: Every reason a params record is refused for (kafka_common.params_topic, wire.params_record,
#: mixture.params, model_state). Their series start at 0, so an alert's increase() counts the
#: first refusal too (a series born at 1 shows no increase).
PARAMS_REJECT_REASONS = (
    "not_json",
    "invalid",
    "name_mismatch",
    "stage_mismatch",
    "bad_signature",
    "replayed",
    "compile_failed",
)


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(float(size))
        size *= 2
    return (*sizes, float(max_batch))


class WorkerMetrics:
    """The service's metrics; `registry` also carries Faust's sensor metrics."""

    def __init__(
        self, max_batch: int, registry: CollectorRegistry | None = None, model: str = "gmm"
    ) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.model_info = Gauge(
            "gmm_model_info",
            "1, labelled with the model name this worker serves (alerts join on it)",
            ["model"],
            registry=r,
        )
        self.model_info.labels(model=model).set(1)
        self.records_in = Counter("gmm_records_in_total", "Input records received", registry=r)
        self.assignments_out = Counter(
            "gmm_assignments_out_total",
            "Assignments delivered, by component",
            ["component"],
            registry=r,
        )
        self.deadlettered = Counter(
            "gmm_deadlettered_total",
            "Input records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "gmm_batch_size_records",
            "Records per micro-batch",
            buckets=batch_buckets(max_batch),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "gmm_inference_seconds",
            "Classifier time per micro-batch",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "gmm_end_to_end_seconds",
            "From the input record's timestamp to its assignment's send",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            "gmm_model_version", "Version of the model being served", registry=r
        )
        self.model_age_seconds = Gauge(
            "gmm_model_age_seconds", "Seconds since the served model was fitted", registry=r
        )
        self.model_swaps = Counter("gmm_model_swaps_total", "Models installed", registry=r)
        self.compilations = Counter(
            "gmm_compilations_total", "Classifier programs compiled (warm-up included)", registry=r
        )
        self.params_rejected = Counter(
            "gmm_params_rejected_total",
            "Params records ignored as invalid, by reason and phase: catch_up (read again when "
            "the worker starts or its params reader reconnects) or live (new records)",
            ["reason", "phase"],
            registry=r,
        )
        for reason in PARAMS_REJECT_REASONS:
            for phase in ("catch_up", "live"):
                self.params_rejected.labels(reason=reason, phase=phase)
        self.recent_log_likelihood = Gauge(
            "gmm_recent_log_likelihood_mean",
            f"Mean log p(x) over the last {DRIFT_WINDOW_BATCHES} batches (drift signal)",
            registry=r,
        )
        self.ready = Gauge("gmm_ready", "1 when a model is loaded and compiled", registry=r)
        self.assigned_partitions = Gauge(
            "gmm_assigned_partitions", "Input partitions assigned to this worker", registry=r
        )
        self.input_open_transaction = Gauge(
            "gmm_input_open_transaction_records",
            "Input offsets behind an open transaction, per assigned partition (high watermark - "
            "last stable offset): read_committed consumers wait until it commits or aborts",
            ["partition"],
            registry=r,
        )
        self.input_lag = Gauge(
            "gmm_input_lag_records",
            "Input records not yet committed, per assigned partition (end offset - committed "
            "offset; updated on a timer)",
            ["partition"],
            registry=r,
        )
        self.input_committed_offset = Gauge(
            "gmm_input_committed_offset",
            "Offset committed for the input topic, per assigned partition",
            ["partition"],
            registry=r,
        )
        self.delivery_errors = Counter(
            "gmm_delivery_errors_total",
            "Failed sends of output record batches, by outcome: retriable (sent again), "
            "rejected (split, then replaced by an output_too_large dead letter), fatal (stop)",
            ["reason"],
            registry=r,
        )
        self.delivery_stuck_seconds = Gauge(
            "gmm_delivery_stuck_seconds",
            "How long the oldest unacknowledged output slice has waited (0: none waits)",
            registry=r,
        )
        self.commit_errors = Counter(
            "gmm_commit_errors_total", "Failed input offset commits (each retried)", registry=r
        )
        self.commit_pending_seconds = Gauge(
            "gmm_commit_pending_seconds",
            "How long delivered input offsets have waited for a commit (0: all committed)",
            registry=r,
        )
        self.last_commit_timestamp_seconds = Gauge(
            "gmm_last_commit_timestamp_seconds",
            "When input offsets were last committed (Unix time)",
            registry=r,
        )
        self.drift_alarms = Counter(
            "gmm_drift_alarms_total",
            "Drift alarms: drops of the served model's mean log p(x) (Page-Hinkley)",
            registry=r,
        )
        self.drift_statistic = Gauge(
            "gmm_drift_statistic",
            "The drift test's Page-Hinkley statistic (alarm at GMM_DRIFT_THRESHOLD)",
            registry=r,
        )
        self.candidate_version = Gauge(
            "gmm_candidate_version",
            "Version of the candidate scored in shadow (NaN: none)",
            registry=r,
        )
        self.candidate_version.set(math.nan)
        self.shadow_records = Counter(
            "gmm_shadow_records_total",
            "Records scored by a candidate in shadow, by candidate version",
            ["candidate_version"],
            registry=r,
        )
        self.shadow_log_likelihood = Gauge(
            "gmm_shadow_log_likelihood_sum",
            "Sum of log p(x) over the records scored in shadow, by candidate version, under the "
            "candidate and under the served model (divide by gmm_shadow_records_total)",
            ["candidate_version", "model"],
            registry=r,
        )
        self.shadow_agreements = Counter(
            "gmm_shadow_agreements_total",
            "Records scored in shadow whose MAP component is the served model's",
            ["candidate_version"],
            registry=r,
        )
        self.events_errors = Counter(
            "gmm_events_errors_total",
            "Events that could not be sent to the events topic",
            registry=r,
        )
        self._fitted_at: float | None = None
        self.model_age_seconds.set_function(self._model_age)
        self._drift: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=DRIFT_WINDOW_BATCHES
        )
        self.recent_log_likelihood.set(math.nan)

    def _model_age(self) -> float:
        return math.nan if self._fitted_at is None else time.time() - self._fitted_at

    def model_installed(self, model: ModelParams) -> None:
        self.model_version.set(model.version)
        self.model_swaps.inc()
        fitted = model.metadata.fitted_at
        try:
            self._fitted_at = dt.datetime.fromisoformat(fitted).timestamp() if fitted else None
        except ValueError:
            self._fitted_at = None

    def observe_shadow(self, version: int, sample: Any) -> None:
        """A slice scored in shadow by candidate `version` (its `ShadowTotals`)."""
        label = str(version)
        self.shadow_records.labels(candidate_version=label).inc(sample.records)
        self.shadow_agreements.labels(candidate_version=label).inc(sample.agreements)
        ll = self.shadow_log_likelihood
        ll.labels(candidate_version=label, model="candidate").inc(sample.candidate_log_likelihood)
        ll.labels(candidate_version=label, model="served").inc(sample.served_log_likelihood)

    def forget_candidate(self, version: int) -> None:
        """Drops a withdrawn candidate's series (each candidate would otherwise add some)."""
        label = str(version)
        for metric, labels in (
            (self.shadow_records, [(label,)]),
            (self.shadow_agreements, [(label,)]),
            (self.shadow_log_likelihood, [(label, "candidate"), (label, "served")]),
        ):
            for values in labels:
                with contextlib.suppress(KeyError):
                    metric.remove(*values)

    def observe_log_likelihood(self, total: float, count: int) -> None:
        if count:
            self._drift.append((total, count))
            n = sum(c for _, c in self._drift)
            self.recent_log_likelihood.set(sum(t for t, _ in self._drift) / n)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """`histogram.observe(v)` for every v, in one vectorized pass.

    prometheus_client observes one value per call (about a microsecond, under a lock); the
    end-to-end histogram gets one value per record, tens of thousands a second, on the event
    loop. Buckets hold counts per upper bound (`le`), as `observe` fills them.
    """
    if values.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
