"""The shadow report (wire.shadow_report): the totals and their difference, the report's round
trip through a `shadow` event, and the refusal of a malformed one."""

from __future__ import annotations

import orjson
import pytest
from numpy.testing import assert_allclose

from wire.event import Event, EventError
from wire.shadow_report import KIND, ShadowReport, ShadowReportError, ShadowTotals

pytestmark = pytest.mark.unit

GOOD = {
    "served_version": 4,
    "records": 100,
    "candidate_log_likelihood": -100.0,
    "served_log_likelihood": -200.0,
    "agreements": 90,
    "worker": "w",
}


def test_totals_add_up_and_compare_the_models():
    parts = [ShadowTotals(10, -10.0, -12.0, 9), ShadowTotals(10, -10.0, -12.0, 8)]
    total = ShadowTotals.sum_of(parts)
    assert total == ShadowTotals(20, -20.0, -24.0, 17) == parts[0].plus(parts[1])
    assert_allclose(total.difference, 0.2)
    assert_allclose(total.agreement, 0.85)
    assert ShadowTotals.sum_of([]) == ShadowTotals()
    assert ShadowTotals().difference == 0.0 and ShadowTotals().agreement == 0.0


def test_a_report_round_trips_through_its_event():
    report = ShadowReport(5, 4, "host-1", ShadowTotals(100, -100.0, -200.0, 90))
    event = report.to_event("gmm")
    assert (event.kind, event.model, event.version) == (KIND, "gmm", 5)
    assert event.statistic == report.difference == 1.0
    again = ShadowReport.from_event(Event.loads(event.dumps()))
    assert again == report


def test_the_data_keeps_its_fields_and_their_order():
    report = ShadowReport(5, 4, "w", ShadowTotals(100, -100.0, -200.0, 90))
    assert orjson.dumps(report.to_json()) == (
        b'{"served_version":4,"records":100,"candidate_log_likelihood":-100.0,'
        b'"served_log_likelihood":-200.0,"agreements":90,"worker":"w"}'
    )


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
    ],
)
def test_a_malformed_report_is_refused_with_a_one_line_message(data):
    with pytest.raises(ShadowReportError) as info:
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data={**GOOD, **data}))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, EventError)


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_a_report_missing_a_field_is_refused(missing):
    data = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ShadowReportError, match=missing.split("_")[0]):
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0, data=data))


def test_only_shadow_events_and_events_with_data_are_reports():
    with pytest.raises(ShadowReportError, match="shadow"):
        ShadowReport.from_event(Event.now("drift", "gmm", 5, 0.0, data=GOOD))
    with pytest.raises(ShadowReportError):
        ShadowReport.from_event(Event.now(KIND, "gmm", 5, 0.0))
