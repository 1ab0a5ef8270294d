"""Shadow scoring's pure parts: two verdicts compared, totals per candidate, the tally."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.classify import Classification
from stream_app.shadow import ShadowScores, compare
from trainer.events import ShadowTally
from wire.event import Event, EventError
from wire.shadow_report import CLIP_NATS, ShadowTotals


def verdict(probs, loglik) -> Classification:
    probs = np.asarray(probs, float)
    return Classification(np.argmax(probs, axis=1), probs, np.asarray(loglik, float))


def test_compare_counts_agreements_over_records_both_scored():
    served = verdict([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [-1.0, -2.0, -3.0])
    candidate = verdict([[0.7, 0.3], [0.9, 0.1], [0.5, 0.5]], [-1.5, -1.0, -np.inf])
    sample = compare(served, candidate)
    assert sample.records == 2  # the third is not finite under the candidate
    assert_allclose(sample.candidate_log_likelihood, -2.5)
    assert_allclose(sample.served_log_likelihood, -3.0)
    assert sample.agreements == 1
    assert_allclose(sample.clipped_difference_sum, 0.5)  # -0.5 + 1.0, neither clipped


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compare_clips_each_records_difference(dtype):
    """A glitch record (log p about -1e17 under one model) counts CLIP_NATS, not 1e17."""
    probs = [[1.0, 0.0]] * 4
    served = verdict(probs, np.array([-1.0, -1e17, -2.0, -3.0], dtype))
    candidate = verdict(probs, np.array([-1.5, -1.0, -1e17, -3.0 + 2 * CLIP_NATS], dtype))
    sample = compare(served, candidate)
    assert sample.records == 4
    # Differences -0.5, about +1e17, -1e17 and 2 * CLIP_NATS: the last three count +-CLIP_NATS.
    assert_allclose(sample.clipped_difference_sum, -0.5 + CLIP_NATS - CLIP_NATS + CLIP_NATS)
    assert_allclose(sample.clipped_difference, (-0.5 + CLIP_NATS) / 4)
    # The plain sums keep the glitches (reports and metrics show them).
    assert sample.candidate_log_likelihood < -1e16 and sample.served_log_likelihood < -1e16


def test_compare_of_a_glitch_alone_is_the_bound():
    served = verdict([[1.0, 0.0]], np.array([-1e17], np.float32))
    candidate = verdict([[1.0, 0.0]], np.array([-1.0], np.float32))
    assert compare(served, candidate).clipped_difference_sum == CLIP_NATS
    assert compare(candidate, served).clipped_difference_sum == -CLIP_NATS


def test_totals_restart_when_either_version_changes():
    scores = ShadowScores()
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 9, 2.0))
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 8, 1.0))
    report = scores.to_report()
    assert report is not None and report.totals.records == 20 and report.totals.agreements == 17
    assert_allclose(report.difference, 0.2)
    assert_allclose(report.totals.clipped_difference, 0.15)
    assert scores.to_report() is None  # nothing new since
    scores.add(5, 6, ShadowTotals(3, -3.0, -3.0, 3))  # the served model changed
    assert scores.to_report().totals.records == 3


def test_totals_restart_for_another_candidate_of_the_same_version():
    scores = ShadowScores("w")
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 9, 2.0), "0123456789abcdef")
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 8, 1.0), "0123456789abcdef")
    report = scores.to_report()
    assert report.totals.records == 20 and report.candidate_digest == "0123456789abcdef"
    # The version came round again with other content: its records are not this one's.
    scores.add(5, 4, ShadowTotals(3, -3.0, -3.0, 3), "fedcba9876543210")
    report = scores.to_report()
    assert report.totals.records == 3 and report.candidate_digest == "fedcba9876543210"


def shadow_event(
    worker: str, records: int, version: int = 5, served: int = 4, clipped: float | None = None
) -> Event:
    """A worker's report: +1 nat per record for the candidate; without `clipped`, an older
    worker's (no clipped sum)."""
    data = {
        "served_version": served,
        "records": records,
        "candidate_log_likelihood": -1.0 * records,
        "served_log_likelihood": -2.0 * records,
        "agreements": records,
        "worker": worker,
    }
    if clipped is not None:
        data["clipped_difference_sum"] = clipped
    return Event.now("shadow", "gmm", version, 1.0, data=data)


def test_tally_sums_each_workers_latest_report():
    tally = ShadowTally()
    for event in (
        shadow_event("a", 100),
        shadow_event("a", 100),  # sent twice: counted once
        shadow_event("a", 300),
        shadow_event("b", 50),
        shadow_event("b", 40),  # older than what b reported: ignored
        shadow_event("c", 999, served=3),  # scored against another served version
    ):
        tally.update(event)
    totals = tally.totals(5, 4)
    assert totals.records == 350 and totals.served_log_likelihood == -700.0
    assert totals.clipped_difference_sum == 350.0  # older reports: the plain difference
    tally.forget(5)
    assert tally.totals(5, 4).records == 0


def test_a_malformed_shadow_report_is_ignored():
    assert not ShadowTally().update(Event.now("shadow", "gmm", 1, 0.0, data={"records": 1}))


@pytest.mark.parametrize(
    "data",
    [{"x": float("nan")}, {"x": True}, {"x": [1]}, {str(i): i for i in range(33)}, "text"],
)
def test_event_data_is_validated(data):
    with pytest.raises(EventError, match="data"):
        Event.now("shadow", "gmm", 1, 0.0, data=data)


def test_event_data_round_trips():
    event = shadow_event("w", 10)
    assert Event.loads(event.dumps()) == event


def test_tally_sums_the_clipped_differences_of_new_and_older_reports():
    tally = ShadowTally()
    tally.update(shadow_event("new", 100, clipped=-40.0))  # clipped by the worker
    tally.update(shadow_event("old", 50))  # no clipped sum: its plain difference, +50
    totals = tally.totals(5, 4)
    assert totals.records == 150 and totals.clipped_difference_sum == 10.0
    assert_allclose(totals.difference, 1.0)  # the plain difference, as before
