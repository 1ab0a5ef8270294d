"""Shadow scoring's pure parts: two verdicts compared, totals per candidate, the tally."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.classify import Classification
from stream_app.shadow import ShadowScores, compare
from trainer.events import ShadowTally
from wire.event import Event, EventError
from wire.shadow_report import ShadowTotals


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


def test_totals_restart_when_either_version_changes():
    scores = ShadowScores()
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 9))
    scores.add(5, 4, ShadowTotals(10, -10.0, -12.0, 8))
    report = scores.to_report()
    assert report is not None and report.totals.records == 20 and report.totals.agreements == 17
    assert_allclose(report.difference, 0.2)
    assert scores.to_report() is None  # nothing new since
    scores.add(5, 6, ShadowTotals(3, -3.0, -3.0, 3))  # the served model changed
    assert scores.to_report().totals.records == 3


def shadow_event(worker: str, records: int, version: int = 5, served: int = 4) -> Event:
    data = {
        "served_version": served,
        "records": records,
        "candidate_log_likelihood": -1.0 * records,
        "served_log_likelihood": -2.0 * records,
        "agreements": records,
        "worker": worker,
    }
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
