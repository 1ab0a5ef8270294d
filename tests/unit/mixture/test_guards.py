"""The publish guards: pure functions of a fit and its window."""

from __future__ import annotations

import numpy as np
import pytest

from mixture.guards import check_finite, check_not_collapsed, check_not_worse, check_shadow
from mixture.params import MixtureParams

GOOD = MixtureParams([0.4, 0.6], [[0.0], [5.0]], [1.0])
POINTS = (
    np.concatenate([np.zeros(50), np.full(50, 5.0)])[:, None] + np.linspace(-1, 1, 100)[:, None]
)


def test_a_good_fit_passes_every_guard():
    assert check_finite(GOOD, 123.0) is None
    assert check_not_collapsed(GOOD, POINTS, 1e-3) is None
    assert check_not_worse(-2.0, -2.0, 0.5) is None


@pytest.mark.parametrize(
    ("params", "loss"),
    [
        (GOOD, float("nan")),
        (GOOD, float("inf")),
        (MixtureParams([0.4, 0.6], [[0.0], [np.nan]], [1.0]), 1.0),
    ],
)
def test_not_finite(params, loss):
    rejection = check_finite(params, loss)
    assert rejection is not None and rejection.reason == "not_finite"


@pytest.mark.parametrize(
    "params",
    [
        MixtureParams([0.9995, 0.0005], [[0.0], [5.0]], [1.0]),  # too light
        MixtureParams([0.5, 0.5], [[0.0], [5.0]], [[1.0], [1e-9]]),  # no spread
    ],
)
def test_collapsed(params):
    rejection = check_not_collapsed(params, POINTS, 1e-3)
    assert rejection is not None and rejection.reason == "collapsed"
    assert "weights" in rejection.detail


@pytest.mark.parametrize(
    ("new", "current", "rejected"),
    [(-2.6, -2.0, True), (-2.5, -2.0, False), (-1.0, -2.0, False)],
)
def test_worse_than_current(new, current, rejected):
    rejection = check_not_worse(new, current, 0.5)
    assert (rejection is not None) == rejected
    if rejected:
        assert rejection.reason == "worse_than_current" and "-2.6000" in rejection.detail


@pytest.mark.parametrize(
    ("records", "candidate", "served", "verdict"),
    [
        (999, -1000.0, -2000.0, "pending"),  # too few records yet, however good
        (1000, -2000.0, -2000.0, "promote"),  # no worse
        (1000, -2040.0, -2000.0, "promote"),  # within the tolerance (0.04 < 0.05 per record)
        (1000, -2060.0, -2000.0, "worse_in_shadow"),
    ],
)
def test_shadow_verdict(records, candidate, served, verdict):
    got = check_shadow(records, candidate, served, 1000, 0.05)
    assert (got if isinstance(got, str) else got.reason) == verdict
