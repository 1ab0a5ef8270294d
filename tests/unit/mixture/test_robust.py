"""Robust fits (mixture.robust): the fence, the trim, and fits that glitches do not move."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import chi2

from mixture.evaluate import component_log_pdf
from mixture.fit import DataError, FitConfig, FitResult
from mixture.labels import align_components, component_sds
from mixture.params import MixtureParams, Priors
from mixture.robust import (
    BEYOND_FENCE,
    FENCE_SPANS,
    IMPLAUSIBLE,
    MAX_TRIM_SHARE,
    TRIM_P_VALUE,
    fence,
    fit_robust,
    implausible,
    inside_fence,
    mahalanobis_sq,
    robust_fit,
    suspect,
)

FAITHFUL = pathlib.Path(__file__).resolve().parents[3] / "bench" / "data" / "faithful.csv"


def test_the_fence_lies_spans_beyond_the_quantiles():
    x = np.arange(101.0)[:, None]  # quantiles 5 and 95: span 90
    lower, upper = fence(x)
    assert_allclose(lower, [5.0 - FENCE_SPANS * 90])
    assert_allclose(upper, [95.0 + FENCE_SPANS * 90])
    glitchy = np.vstack([x, [[1e9]], [[-1e15]], [[95.0 + FENCE_SPANS * 90 - 1]]])
    assert inside_fence(glitchy).tolist() == [True] * 101 + [False, False, True]


def test_a_glitch_cannot_widen_the_fence():
    """Up to 5 % of the points on one side move the quantiles within the clean data only."""
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, (1000, 2))
    glitchy = clean.copy()
    glitchy[:40, 1] = 10.0 ** rng.uniform(3, 15, 40)
    lower, upper = fence(glitchy)
    assert upper[1] < 150 and lower[1] > -150  # 20 spans of about 3.3 beyond +-1.6
    assert not inside_fence(glitchy)[:40].any() and inside_fence(glitchy)[40:].all()


def test_a_glitch_in_a_tiny_window_is_fenced():
    """The quantiles sit on data points, not half way to a glitch in a window of 10."""
    x = np.r_[np.arange(9.0), 1e9][:, None]
    assert inside_fence(x).tolist() == [True] * 9 + [False]


def test_missing_coordinates_and_columns_without_spread_are_not_fenced():
    x = np.column_stack([np.r_[np.zeros(95), np.arange(1.0, 6.0)], np.arange(100.0)])
    x[3, 1] = np.nan
    lower, upper = fence(x)
    assert np.isinf(lower[0]) and np.isinf(upper[0])  # over 90 % equal: span 0
    assert inside_fence(x).all()


def test_mahalanobis_distance_of_each_point_to_each_component():
    params = MixtureParams([0.5, 0.5], [[0.0, 0.0], [10.0, 0.0]], [[1.0, 2.0], [2.0, 1.0]])
    x = np.array([[1.0, 2.0], [10.0, np.nan]])
    d2 = mahalanobis_sq(x, params)
    assert_allclose(d2[0], [1.0 + 1.0, 81 / 4 + 4.0])
    assert_allclose(d2[1], [100.0, 0.0])  # only the observed coordinate counts


def test_the_trim_cut_is_the_chi_square_quantile_for_the_observed_coordinates():
    params = MixtureParams([1.0], [[0.0, 0.0]], [1.0, 1.0])
    cut1, cut2 = np.sqrt(chi2.isf(TRIM_P_VALUE, 1)), np.sqrt(chi2.isf(TRIM_P_VALUE, 2))
    x = np.array(
        [
            [0.0, cut2 * 0.99],
            [0.0, cut2 * 1.01],
            [cut1 * 1.01, np.nan],  # one observed coordinate: the 1-degree cut
            [np.nan, cut1 * 0.99],
        ]
    )
    assert implausible(np.vstack([x, np.zeros((96, 2))]), params)[:4].tolist() == [
        False,
        True,
        True,
        False,
    ]


def test_at_most_a_share_of_the_points_is_trimmed_the_farthest_first():
    params = MixtureParams([1.0], [[0.0]], [1.0])
    x = np.r_[np.zeros(90), np.arange(10.0, 20.0)][:, None]
    far = implausible(x, params)
    cap = int(MAX_TRIM_SHARE * len(x))
    assert far.sum() == cap and far[-cap:].all()
    # The forced share: the farthest, whatever their distance.
    near = np.r_[np.zeros(98), 1.0, 2.0][:, None]
    assert implausible(near, params).sum() == 0
    assert implausible(near, params, forced_share=0.02)[-2:].all()


def _mean_fit(points: np.ndarray, warm: MixtureParams | None) -> FitResult:
    """A one-component 'fit' by moments, numpy only: enough to test the rounds."""
    if len(points) < 2:
        raise DataError("too few", "too_few_points")
    params = MixtureParams(np.ones(1), points.mean(axis=0)[None], points.std(axis=0))
    priors = Priors(*[np.zeros(1)] * 6)
    return FitResult(params, priors, 0.0, np.zeros(1), {}, 1, True, 0.5)


def test_robust_fit_fences_trims_and_refits_until_nothing_changes():
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 1.0, (500, 1))
    glitchy = np.vstack([clean, [[1e12]], [[12.0]], [[10.0]]])
    fitted = robust_fit(glitchy, _mean_fit)
    assert fitted.excluded == {BEYOND_FENCE: 1, IMPLAUSIBLE: 2}
    assert fitted.kept.tolist() == [True] * 500 + [False] * 3
    assert_allclose(fitted.result.params.locs, clean.mean(axis=0)[None])
    assert fitted.rounds >= 2 and fitted.result.seconds == 0.5 * fitted.rounds


def test_robust_fit_of_clean_data_is_the_plain_fit():
    """A fit that is not suspect and leaves nothing beyond the cut is the only fit."""
    clean = np.random.default_rng(2).normal(0.0, 1.0, (500, 2))
    fitted = robust_fit(clean, _mean_fit)
    assert fitted.rounds == 1 and fitted.n_excluded == 0 and fitted.kept.all()
    assert_allclose(fitted.result.params.locs, clean.mean(axis=0)[None])


def test_a_fit_is_suspect_when_a_component_is_light_or_stretched():
    x = np.random.default_rng(3).normal(0.0, 1.0, (1000, 2))
    assert not suspect(x, MixtureParams([1.0], [[0.0, 0.0]], [1.0, 1.0]))
    assert suspect(x, MixtureParams([1.0], [[0.0, 0.0]], [1.5, 1.5]))  # variance x2.25
    light = MixtureParams([0.99, 0.01], [[0.0, 0.0], [50.0, 50.0]], [[1.0, 1.0], [1.0, 1.0]])
    assert suspect(x, light)


def test_no_usable_component_trims_nothing():
    params = MixtureParams([1.0], [[0.0]], [np.nan])
    assert not implausible(np.arange(100.0)[:, None], params, forced_share=0.02).any()


def test_robust_fit_keeps_the_last_fit_when_a_refit_cannot_run():
    calls = []

    def refit(points: np.ndarray, warm: MixtureParams | None) -> FitResult:
        calls.append(len(points))
        raise DataError("no spread", "zero_variance")

    fitted = robust_fit(np.r_[np.zeros(50), 1.0, 100.0][:, None], _mean_fit, refit)
    assert calls and fitted.rounds == 1 and fitted.n_excluded == 0


def test_invalid_data_is_a_data_error():
    with pytest.raises(DataError):
        robust_fit(np.array([[np.inf], [1.0]]), _mean_fit)


def test_glitches_cannot_hide_behind_a_light_component():
    """1 % of tight glitches 20 sd beyond a component of weight 0.2 inflate its covariance
    until the cut computed from it cannot see them; the forced trim's fit can."""
    rng = np.random.default_rng(4)
    n = 1000
    heavy = rng.random(n) < 0.8
    x = np.where(heavy[:, None], rng.normal(0.0, 1.0, (n, 2)), rng.normal(10.0, 1.0, (n, 2)))
    config = FitConfig(n_components=2, covariance="diag", n_init=10)
    reference = fit_robust(x, jax.random.PRNGKey(0), config)
    clean = reference.result.params
    glitchy = x.copy()
    glitchy[:10] = np.array([30.0, 30.0]) + rng.normal(0.0, 0.1, (10, 2))
    fitted = fit_robust(glitchy, jax.random.PRNGKey(0), config)
    # The clean fit itself trims one tail point (d^2 = 26.3, beyond the cut of 23.0).
    assert reference.excluded == {BEYOND_FENCE: 0, IMPLAUSIBLE: 1}
    assert fitted.excluded == {BEYOND_FENCE: 0, IMPLAUSIBLE: 11}
    assert not fitted.kept[:10].any()
    params = align_components(fitted.result.params, clean)
    assert np.max(np.abs(params.locs - clean.locs) / component_sds(clean)) < 0.1


# --- The real fit on Old Faithful (2-D: eruption minutes, waiting minutes) -------------------

COVARIANCES = ("tied-diag", "diag", "spherical", "tied", "full")


def _faithful() -> np.ndarray:
    return np.loadtxt(FAITHFUL, delimiter=",", skiprows=1)


def _fit(points: np.ndarray, covariance: str):
    config = FitConfig(n_components=2, covariance=covariance, n_init=10)
    return fit_robust(points, jax.random.PRNGKey(0), config)


def _assign(params: MixtureParams, points: np.ndarray) -> np.ndarray:
    return np.argmax(np.log(params.weights) + component_log_pdf(points, params), axis=1)


def _glitches(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Old Faithful with glitches, and which of its 272 clean points remain."""
    x = _faithful()
    if kind == "one at 1e9":  # the report's example: one record with waiting = 1e9, added
        return np.vstack([x, [[3.0, 1e9]]]), np.ones(len(x), bool)
    if kind == "one at 30 sd":  # inside the fence; a spherical fit gave it a component
        return np.vstack([x, [[3.0, 96.0 + 30 * 13.6]]]), np.ones(len(x), bool)
    rows = rng.choice(len(x), 3, replace=False)  # 1 % of the window replaced
    x[rows, 1] = {
        "1% in [1e6, 1e9]": 10.0 ** rng.uniform(6, 9, 3),
        "1% at -1e15": np.full(3, -1e15),
        "1% at 10 sd": np.full(3, 96.0 + 60.0),  # inside the fence: the trim's job
    }[kind]
    clean = np.ones(len(x), bool)
    clean[rows] = False
    return x, clean


@pytest.fixture(scope="module")
def clean_fits():
    return {c: _fit(_faithful(), c) for c in COVARIANCES}


CASES = [
    *((c, k) for c in COVARIANCES for k in ("one at 1e9", "1% in [1e6, 1e9]", "1% at 10 sd")),
    *((c, k) for c in ("spherical", "full") for k in ("one at 30 sd", "1% at -1e15")),
]


@pytest.mark.parametrize(("covariance", "kind"), CASES)
def test_glitches_do_not_move_the_fit(clean_fits, covariance, kind):
    """Within 0.1 sd of the clean fit's locations, >= 99 % of the clean points keep their
    clean-fit component; the glitches are counted as left out."""
    reference = clean_fits[covariance]
    assert reference.n_excluded == 0  # clean Old Faithful loses nothing
    ref = reference.result.params
    x, clean = _glitches(kind, np.random.default_rng(COVARIANCES.index(covariance)))
    fitted = _fit(x, covariance)
    params = align_components(fitted.result.params, ref)
    error = np.abs(np.asarray(params.locs) - ref.locs) / component_sds(ref)
    assert error.max() < 0.1, error
    faithful = _faithful()
    same = _assign(params, faithful[clean]) == _assign(ref, faithful[clean])
    assert same.mean() >= 0.99
    assert fitted.n_excluded == len(x) - clean.sum()
    assert not fitted.kept[: len(clean)][clean].__invert__().any()  # no clean point left out
