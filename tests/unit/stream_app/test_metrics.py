"""Worker metrics: the drift signal, model age and Faust's sensor on the same registry."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import generate_latest

from mixture.params import FitMetadata, MixtureParams, ModelParams
from stream_app.faust_sensor import faust_sensor
from stream_app.metrics import (
    END_TO_END_BUCKETS,
    WorkerMetrics,
    batch_buckets,
    observe_many,
)


def test_drift_signal_is_the_mean_over_recent_batches():
    m = WorkerMetrics(64)
    assert math.isnan(m.recent_log_likelihood._value.get())
    m.observe_log_likelihood(-10.0, 5)
    m.observe_log_likelihood(-30.0, 5)
    assert m.recent_log_likelihood._value.get() == -4.0


def test_model_installed_sets_version_and_age():
    m = WorkerMetrics(64)
    model = ModelParams(
        5, MixtureParams([1.0], [[0.0]], [1.0]), FitMetadata(fitted_at="2020-01-01T00:00:00+00:00")
    )
    m.model_installed(model)
    text = generate_latest(m.registry).decode()
    assert "gmm_model_version 5.0" in text
    age = float(
        next(
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("gmm_model_age_seconds ")
        )
    )
    assert age > 86400 * 365


def test_faust_sensor_shares_the_registry_with_seconds_units():
    m = WorkerMetrics(64)
    faust_sensor(m.registry)
    text = generate_latest(m.registry).decode()
    assert "faust_events_runtime_seconds_bucket" in text
    assert "_runtime_ms" not in text
    assert "gmm_records_in_total" in text


def test_batch_buckets():
    assert batch_buckets(1) == (1.0,)
    assert batch_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)


def _exposition(histogram_values, vectorized):
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    h = Histogram("t_seconds", "t", buckets=END_TO_END_BUCKETS, registry=registry)
    if vectorized:
        observe_many(h, np.asarray(histogram_values, dtype=np.float64))
    else:
        for v in histogram_values:
            h.observe(v)
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_observe_many_equals_one_observe_per_value():
    rng = np.random.default_rng(0)
    # Exactly on bucket bounds, between them, beyond the last, and zero.
    values = [*END_TO_END_BUCKETS, 0.0, 11.0, *rng.exponential(0.1, 1000).tolist()]
    many, one_by_one = _exposition(values, True), _exposition(values, False)
    sums = [float(line.split()[1]) for line in (*many, *one_by_one) if "_sum " in line]
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-12)  # summed in another order
    assert [x for x in many if "_sum " not in x] == [x for x in one_by_one if "_sum " not in x]
    assert _exposition([], True) == _exposition([], False)


def test_the_model_name_and_every_params_refusal_are_exported_from_the_start():
    """Alerts join on gmm_model_info and count refusals with increase(), which sees nothing in
    a series born at 1: every reason and phase starts at 0."""
    from prometheus_client.parser import text_string_to_metric_families

    from stream_app.metrics import PARAMS_REJECT_REASONS

    m = WorkerMetrics(64, model="fraud")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in family.samples
    }
    assert samples[("gmm_model_info", (("model", "fraud"),))] == 1
    for reason in PARAMS_REJECT_REASONS:
        for phase in ("catch_up", "live"):
            key = ("gmm_params_rejected_total", (("phase", phase), ("reason", reason)))
            assert samples[key] == 0
