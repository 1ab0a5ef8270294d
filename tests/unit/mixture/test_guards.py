"""The publish guards: pure functions of a fit and its window (and a candidate's shadow scores)."""

from __future__ import annotations

import numpy as np
import pytest

from mixture.evaluate import log_likelihood
from mixture.guards import (
    check_finite,
    check_keeps_explained,
    check_not_collapsed,
    check_not_worse,
    check_shadow,
    trimmed_mean,
)
from mixture.params import MixtureParams
from wire.shadow_report import CLIP_NATS  # the bound the workers clip each record's difference to

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
    ("records", "clipped_sum", "verdict"),
    [
        (999, 1000.0, "pending"),  # too few records yet, however good
        (1000, 0.0, "promote"),  # no worse
        (1000, -40.0, "promote"),  # within the tolerance (0.04 < 0.05 per record)
        (1000, -60.0, "worse_in_shadow"),
    ],
)
def test_shadow_verdict(records, clipped_sum, verdict):
    got = check_shadow(records, clipped_sum, 1000, 0.05, difference=clipped_sum / records)
    assert (got if isinstance(got, str) else got.reason) == verdict
    if verdict == "worse_in_shadow":
        assert "clipped mean" in got.detail and "-0.0600" in got.detail


# ------------------------------------------------ the shadow verdict, from per-record log p(x)

#: The shadow records: draws of the stream, N(0, 1), at the default GMM_SHADOW_RECORDS.
SHADOW_RECORDS = 5000
STREAM = np.random.default_rng(0).normal(0.0, 1.0, SHADOW_RECORDS)
#: A record far out, as a glitch in the input would be: log p(x) about -1e17 under N(0, 1).
GLITCH = 1e9


def normal_log_p(x: np.ndarray, sd: float) -> np.ndarray:
    """log p(x) under N(0, sd^2), per record, in float64."""
    return -0.5 * np.log(2 * np.pi) - np.log(sd) - 0.5 * (x / sd) ** 2


def shadow(candidate: np.ndarray, served: np.ndarray, tolerance: float = 0.05):
    """The guard's verdict on per-record log p(x) of both models (clipped as the workers do),
    and what judging the plain difference of the means would have said."""
    difference = candidate - served
    clipped_sum = float(np.clip(difference, -CLIP_NATS, CLIP_NATS).sum())
    plain = float(difference.mean())
    got = check_shadow(difference.size, clipped_sum, SHADOW_RECORDS, tolerance, difference=plain)
    verdict = got if isinstance(got, str) else got.reason
    return verdict, ("promote" if plain >= -tolerance else "worse_in_shadow")


@pytest.mark.parametrize(
    ("candidate_sd", "served_sd", "verdict"),
    [
        # Broader than the stream: about 0.13 nats per record worse than the served N(0, 1),
        # so a glitch favours it (its log p(x) there is less negative).
        (1.5, 1.0, "worse_in_shadow"),
        # The stream's own model against a broader served one: a glitch goes against it.
        (1.0, 1.5, "promote"),
    ],
)
@pytest.mark.parametrize("glitch", [GLITCH, -GLITCH])
def test_one_glitch_does_not_change_the_shadow_verdict(candidate_sd, served_sd, verdict, glitch):
    clean = shadow(normal_log_p(STREAM, candidate_sd), normal_log_p(STREAM, served_sd))
    assert clean == (verdict, verdict)
    x = np.append(STREAM, glitch)
    got, plain = shadow(normal_log_p(x, candidate_sd), normal_log_p(x, served_sd))
    assert got == verdict
    assert plain != verdict  # what one record did to the plain difference of the means


@pytest.mark.parametrize(
    "worse_by",
    [
        np.full(SHADOW_RECORDS, 1.0),  # 1 nat lower on every record
        np.where(np.arange(SHADOW_RECORDS) % 5 < 2, 30.0, 0.0),  # 30 nats lower on 40% of them
        np.where(np.arange(SHADOW_RECORDS) % 10 == 0, 3.0, 0.0),  # 3 nats lower on 10%
    ],
)
def test_a_truly_worse_candidate_is_rejected(worse_by):
    served = normal_log_p(STREAM, 1.0)
    got, _ = shadow(served - worse_by, served)
    assert got == "worse_in_shadow"
    # With a glitch in its favour too.
    x = np.append(STREAM, GLITCH)
    served = normal_log_p(x, 1.0)
    got, _ = shadow(normal_log_p(x, 1.5) - np.append(worse_by, 0.0), served)
    assert got == "worse_in_shadow"


def test_a_refit_may_not_leave_out_what_the_current_model_explains():
    assert check_keeps_explained(0, 1000) is None
    assert check_keeps_explained(10, 1000) is None  # 1 %: the glitches a fit withstands
    rejection = check_keeps_explained(11, 1000)
    assert rejection is not None and rejection.reason == "left_out_explained"
