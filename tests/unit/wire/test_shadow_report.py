"""The shadow report (wire.shadow_report): the totals and their differences (plain and clipped),
the report's round trip through a `shadow` event, an older worker's report without the clipped
sum or the candidate digest, the refusal of a malformed one, and the candidate digest that binds
a report to the candidate's content."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from numpy.testing import assert_allclose

from mixture.params import FitMetadata, MixtureParams, ModelParams
from wire.event import Event, EventError
from wire.shadow_report import (
    CLIP_NATS,
    DIGEST_CHARS,
    KIND,
    ShadowReport,
    ShadowReportError,
    ShadowTotals,
    model_digest,
)

pytestmark = pytest.mark.unit

GOOD = {
    "served_version": 4,
    "records": 100,
    "candidate_log_likelihood": -100.0,
    "served_log_likelihood": -200.0,
    "agreements": 90,
    "worker": "w",
    "clipped_difference_sum": 100.0,
    "candidate_digest": "0123456789abcdef",
}
#: What a report from a worker older than these fields lacks (and is still read without).
OPTIONAL = {"clipped_difference_sum", "candidate_digest"}


def test_totals_add_up_and_compare_the_models():
    parts = [ShadowTotals(10, -10.0, -12.0, 9, 2.0), ShadowTotals(10, -10.0, -12.0, 8, 1.0)]
    total = ShadowTotals.sum_of(parts)
    assert total == ShadowTotals(20, -20.0, -24.0, 17, 3.0) == parts[0].plus(parts[1])
    assert_allclose(total.difference, 0.2)
    assert_allclose(total.clipped_difference, 0.15)
    assert_allclose(total.agreement, 0.85)
    assert ShadowTotals.sum_of([]) == ShadowTotals()
    empty = ShadowTotals()
    assert empty.difference == empty.clipped_difference == empty.agreement == 0.0


def test_the_clipped_sum_is_appended_so_positional_totals_keep_their_meaning():
    totals = ShadowTotals(10, -10.0, -12.0, 9)
    assert totals.clipped_difference_sum == 0.0
    assert ShadowTotals._fields[-1] == "clipped_difference_sum"


def test_a_report_round_trips_through_its_event():
    # A glitch: the plain difference is huge, the clipped sum holds it to CLIP_NATS.
    totals = ShadowTotals(100, -100.0 + 1e17, -200.0, 90, 99.0 + CLIP_NATS)
    report = ShadowReport(5, 4, "host-1", totals)
    event = report.to_event("gmm")
    assert (event.kind, event.model, event.version) == (KIND, "gmm", 5)
    assert event.statistic == report.difference == totals.difference  # the plain one
    again = ShadowReport.from_event(Event.loads(event.dumps()))
    assert again == report
    assert_allclose(again.totals.clipped_difference, 1.09)


def test_the_data_keeps_its_fields_and_their_order():
    report = ShadowReport(5, 4, "w", ShadowTotals(100, -100.0, -200.0, 90, 100.0))
    assert orjson.dumps(report.to_json()) == (
        b'{"served_version":4,"records":100,"candidate_log_likelihood":-100.0,'
        b'"served_log_likelihood":-200.0,"agreements":90,"worker":"w",'
        b'"clipped_difference_sum":100.0}'
    )


@pytest.mark.parametrize(
    ("candidate", "served", "clipped"),
    [
        (-100.0, -200.0, 100.0),  # within +-CLIP_NATS per record: the plain difference
        (-100.0 + 1e17, -200.0, CLIP_NATS * 100),  # a glitch in the candidate's favour
        (-100.0, -200.0 + 1e17, -CLIP_NATS * 100),  # and one against it
    ],
)
def test_an_older_workers_report_is_read_with_its_difference_clamped(candidate, served, clipped):
    data = {k: v for k, v in GOOD.items() if k not in OPTIONAL}
    data |= {"candidate_log_likelihood": candidate, "served_log_likelihood": served}
    totals = ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data=data)).totals
    assert totals.clipped_difference_sum == clipped
    assert (totals.candidate_log_likelihood, totals.served_log_likelihood) == (candidate, served)


@pytest.mark.parametrize("clipped", [CLIP_NATS * 100, -CLIP_NATS * 100, 0, 1e-9 - CLIP_NATS * 100])
def test_a_clipped_sum_within_the_bound_is_read(clipped):
    event = Event.now(KIND, "gmm", 5, 0.0, data={**GOOD, "clipped_difference_sum": clipped})
    totals = ShadowReport.from_event(event).totals
    assert totals.clipped_difference_sum == clipped
    assert isinstance(totals.clipped_difference_sum, float)


def test_reports_add_slices():
    report = ShadowReport(5, 4, "w").added(ShadowTotals(3, -3.0, -6.0, 2))
    assert report.added(ShadowTotals(1, -1.0, -1.0, 1)).totals == ShadowTotals(4, -4.0, -7.0, 3)


def test_integer_sums_are_read_as_floats():
    event = Event.now(KIND, "gmm", 5, 0.0, data={**GOOD, "served_log_likelihood": -200})
    totals = ShadowReport.from_event(event).totals
    assert isinstance(totals.served_log_likelihood, float)


@pytest.mark.parametrize(
    "data",
    [
        {"records": 1.0},
        {"records": "100"},
        {"agreements": 1.5},
        {"records": 10, "agreements": 11},
        {"records": -1, "agreements": 0},
        {"agreements": -1},
        {"served_version": "4"},
        {"served_version": 4.0},
        {"candidate_log_likelihood": "inf"},
        {"served_log_likelihood": "-200"},
        {"worker": 7},
        {"clipped_difference_sum": "100"},
        {"clipped_difference_sum": CLIP_NATS * 100 + 1.0},  # over CLIP_NATS per record
        {"clipped_difference_sum": -CLIP_NATS * 100 - 1.0},
        {"clipped_difference_sum": 1e17},
        {"records": 0, "agreements": 0, "clipped_difference_sum": 1.0},
        {"candidate_digest": 7},
        {"candidate_digest": "0123456789ABCDEF"},
        {"candidate_digest": "0123456789abcde"},
        {"candidate_digest": "0123456789abcdef0"},
        {"candidate_digest": "0123456789abcdeg"},
    ],
)
def test_a_malformed_report_is_refused_with_a_one_line_message(data):
    with pytest.raises(ShadowReportError) as info:
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data={**GOOD, **data}))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, EventError)


@pytest.mark.parametrize("missing", sorted(set(GOOD) - OPTIONAL))
def test_a_report_missing_a_field_is_refused(missing):
    data = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ShadowReportError, match=missing.split("_")[0]):
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data=data))


def test_only_shadow_events_and_events_with_data_are_reports():
    with pytest.raises(ShadowReportError, match="shadow"):
        ShadowReport.from_event(Event.now("drift", "gmm", 5, 0.0, data=GOOD))
    with pytest.raises(ShadowReportError):
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0))


def candidate(
    fitted_at: str = "2026-11-28T05:00:00+00:00", covariance: str = "diag"
) -> ModelParams:
    scale = {
        "diag": [[1.0, 0.5], [0.25, 2.0]],
        "tied-diag": [1.0, 0.5],
        "spherical": [[1.0, 1.0], [0.3, 0.3]],
        "tied": [[[1.0, 0.0], [0.5, 2.0]]] * 2,
        "full": [[[1.0, 0.0], [0.5, 2.0]], [[0.3, 0.0], [-0.1, 0.7]]],
    }[covariance]
    return ModelParams(
        3,
        MixtureParams([0.3, 0.7], [[2.0, 1.0 / 3.0], [9.0, -4.1]], scale),
        FitMetadata(fitted_at=fitted_at, n_points=1000, extra={"model_name": "gmm", "aic": 1.5}),
        covariance,
    )


@pytest.mark.parametrize("covariance", ["diag", "tied-diag", "spherical", "tied", "full"])
def test_the_digest_is_the_same_on_both_sides_of_the_params_record(covariance):
    # The trainer digests the model it published; a worker, the model it read from the record.
    model = candidate(covariance=covariance)
    digest = model_digest(model)
    assert len(digest) == DIGEST_CHARS and int(digest, 16) >= 0
    assert model_digest(ModelParams.loads(model.dumps())) == digest
    assert model_digest(ModelParams.loads(model.dumps().encode())) == digest


def test_the_digest_tells_candidates_of_one_version_apart():
    # The same version number, fitted at another time (a version numbering restarted) or with
    # other parameters: another candidate, another digest.
    model = candidate()
    january = candidate(fitted_at="2025-01-15T09:00:00+00:00")
    moved = dataclasses.replace(
        model, mixture=model.mixture._replace(locs=[[2.0, 1.0 / 3.0], [9.0, -4.0]])
    )
    digests = {model_digest(m) for m in (model, january, moved, model.with_version(4))}
    assert len(digests) == 4


def test_a_report_carries_the_candidate_digest_last():
    digest = model_digest(candidate())
    report = ShadowReport(5, 4, "w", ShadowTotals(100, -100.0, -200.0, 90, 100.0), digest)
    data = report.to_json()
    assert list(data)[-1] == "candidate_digest" and data["candidate_digest"] == digest
    event = report.to_event("gmm")
    assert ShadowReport.from_event(Event.loads(event.dumps())) == report
    # Summing slices keeps it.
    assert report.added(ShadowTotals(1, -1.0, -1.0, 1)).candidate_digest == digest
    # An older worker's report has none.
    old = {k: v for k, v in GOOD.items() if k != "candidate_digest"}
    assert (
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data=old)).candidate_digest is None
    )
