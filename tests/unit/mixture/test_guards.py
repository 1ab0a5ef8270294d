"""The publish guards: pure functions of a fit and its window."""

from __future__ import annotations

import numpy as np
import pytest

from mixture.evaluate import log_likelihood
from mixture.guards import (
    check_finite,
    check_not_collapsed,
    check_not_worse,
    check_shadow,
    trimmed_mean,
)
from mixture.params import MixtureParams

GOOD = MixtureParams([0.4, 0.6], [[0.0], [5.0]], [1.0])
POINTS = (
    np.concatenate([np.zeros(50), np.full(50, 5.0)])[:, None] + np.linspace(-1, 1, 100)[:, None]
)


def test_a_good_fit_passes_every_guard():
    assert check_finite(GOOD, 123.0) is None
    assert check_not_collapsed(GOOD, POINTS, 1e-3) is None
    assert check_not_worse(np.full(9, -2.0), np.full(9, -2.0), 0.5) is None


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
    rejection = check_not_worse(np.full(40, new), np.full(40, current), 0.5)
    assert (rejection is not None) == rejected
    if rejected:
        assert rejection.reason == "worse_than_current" and "-0.6000" in rejection.detail


def test_trimmed_mean_leaves_out_the_extremes():
    values = np.arange(100.0)
    assert trimmed_mean(values) == pytest.approx(np.mean(values[2:98]))
    # One extreme value at either end is trimmed even in a small sample.
    assert trimmed_mean(np.array([1.0, 2.0, 3.0, -5e29])) == pytest.approx(1.5)
    assert trimmed_mean(np.array([1.0, 2.0, np.nan, np.inf, 3.0])) == pytest.approx(2.0)
    assert np.isnan(trimmed_mean(np.array([])))


WINDOW = np.random.default_rng(3).normal([[0.0]] * 300 + [[5.0]] * 300, 1.0)
CURRENT = MixtureParams([0.5, 0.5], [[0.0], [5.0]], [1.0])
#: A refit that is no worse on the window (a small move), and one clearly worse (locations
#: 1.5 sd off: about 1.1 nats per point lower).
REFIT = MixtureParams([0.5, 0.5], [[0.05], [4.95]], [1.02])
WORSE = MixtureParams([0.5, 0.5], [[1.5], [3.5]], [1.0])


def _decision(new: MixtureParams, points: np.ndarray) -> bool:
    new_ll, current_ll = log_likelihood(points, new), log_likelihood(points, CURRENT)
    return check_not_worse(new_ll, current_ll, 0.25) is None


@pytest.mark.parametrize("glitch", [1e9, -1e15, 2e3])
def test_one_glitch_in_the_window_does_not_change_the_regression_decision(glitch):
    """A glitch's log p(x) is about -1e17 under one model and -1e15 under a broader one: in a
    plain mean that difference outweighs every other point; the trimmed mean ignores it."""
    glitchy = np.vstack([WINDOW, [[glitch]]])
    # A broader model wins the glitch by a wide margin, yet stays rejected when worse.
    broad_worse = MixtureParams([0.5, 0.5], [[2.5], [2.5]], [3.0])  # 0.34 nats per point worse
    assert not _decision(broad_worse, WINDOW)
    assert not _decision(broad_worse, glitchy)
    plain = np.mean(log_likelihood(glitchy, broad_worse) - log_likelihood(glitchy, CURRENT))
    assert plain > 0  # what the plain mean would have said: better
    # And a good refit, narrower than the current model, stays accepted.
    narrow_good = CURRENT._replace(scale=np.array([0.98]))
    assert _decision(narrow_good, WINDOW) and _decision(narrow_good, glitchy)


def test_a_really_worse_fit_is_still_rejected():
    assert _decision(REFIT, WINDOW)
    assert not _decision(WORSE, WINDOW)
    # Worse on a third of the points only (one cluster missed), by many nats: still rejected.
    half = MixtureParams([0.5, 0.5], [[0.0], [9.0]], [1.0])
    assert not _decision(half, WINDOW)


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
