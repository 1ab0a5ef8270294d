"""Fits that glitches cannot move: a fence before the fit, a trim after it.

A Gaussian mixture's MAP fit has unbounded influence: one point at 1e9 among Old Faithful's 272
eruptions moved the fitted locations by millions of standard deviations. `robust_fit` fits only
the points two documented rules keep, and says how many each rule left out (the trainer counts
them in `gmm_trainer_fit_excluded_points_total{reason}`, the fit report and the CLI summary
show them). Leaving a point out of a fit never drops it from serving: the worker classifies
every valid point under the model.

1. **Fence** (reason `beyond_fence`, before any fit). Per coordinate, from its observed values:
   lo and hi are the FENCE_QUANTILE and 1 - FENCE_QUANTILE quantiles (each at a data point on
   the inner side) and span = hi - lo; a point with an observed coordinate outside
   [lo - FENCE_SPANS * span, hi + FENCE_SPANS * span] is left out. Quantiles move by at most
   one rank per glitch, so up to FENCE_QUANTILE of the window on either side (5 %) cannot
   widen the fence past the clean data's own range; for one Gaussian the fence lies 67
   standard deviations out. It stops the values that would wreck a fit's arithmetic; a
   coordinate whose middle 90 % is one value has no fence (its span says nothing of scale).
2. **Trim** (reason `implausible`, after a fit). A point whose squared Mahalanobis distance to
   every component, over its observed coordinates, exceeds the chi-square quantile at
   1 - TRIM_P_VALUE for that many degrees of freedom is left out, and the fit is redone
   without it, from the last fit (a warm start: a few EM steps), until the points left out no
   longer change (at most TRIM_ROUNDS fits). After a `suspect` fit (a component lighter than
   EXPLAINING_WEIGHT, or one whose points do not fill its covariance) the first trim also
   leaves out the farthest FORCED_TRIM_SHARE (2 %) whatever their distance: glitches can
   inflate a light component's covariance until no cut computed from it sees them; the next
   fit sees them from the clean points, and the clean points the first trim left out come
   back. Clean Gaussian data loses TRIM_P_VALUE of its points to the cut (1 in 100,000), and
   its fit is the first one; at most MAX_TRIM_SHARE of the window is ever trimmed by the cut
   (the farthest first).

Limits (measured by `python -m bench.contamination`): a glitch that lies within the trim's
distance of a component (under 4.4 standard deviations in one dimension, 4.8 in two, 6.1 in
eight) is indistinguishable from that component's tail and stays in; a share s of such
glitches on a component of weight w moves its location by at most about (s / w) times that
distance. Glitches that are many and tight enough to look like a cluster (a real cluster is
nothing else) can take a component of their own when K allows one; the guard's minimum weight
(GMM_TRAIN_MIN_WEIGHT) rejects a fit that spends a component on fewer points than that. A real
cluster lighter than 5 % of the window that lies more than FENCE_SPANS spans beyond the rest
is fenced out, or trimmed when it lies beyond the cut of every component (and counted as
such); the trainer's guard rejects a refit that so leaves out more than 1 % of the window that
the current model explains (`mixture.guards.check_keeps_explained`). Heavy-tailed data (a
Student t with 3 degrees of freedom: 1-3 %) keep a steady count of trimmed tail points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

# scipy.special's chi-square functions: scipy.stats costs a CLI a second to import.
from scipy.special import chdtr, chdtri

from mixture.evaluate import component_log_pdf
from mixture.fit import (
    DataError,
    FitConfig,
    FitPrograms,
    FitResult,
    as_points,
    default_programs,
    fit_map,
)
from mixture.fit_hosts import local_part, spans_processes
from mixture.params import MixtureParams
from mixture.process_group import ONE_PROCESS, AllProcesses, PointGroup, quantile_rank
from mixture.select import fit_auto

#: The fence's quantiles (and the largest share of glitches on one side it is immune to).
FENCE_QUANTILE = 0.05
#: How many spans (hi - lo) beyond the quantiles the fence lies. The fence only has to stop
#: values that would wreck a fit's arithmetic (1e9 among values near 70); the trim sees to
#: the rest. Wide enough that a heavy-tailed or wide component keeps its tails (fewer than
#: 0.3 % of Cauchy or log-normal data lie beyond it).
FENCE_SPANS = 20.0
#: A point less likely than this under every component (its Mahalanobis distance) is trimmed.
TRIM_P_VALUE = 1e-5
#: The first trim leaves out the farthest FORCED_TRIM_SHARE of the points whatever their
#: distance: glitches that pull a light component towards them can inflate its covariance
#: until no cut computed from it can see them (measured: 1 % of glitches on a component of
#: weight 0.2). The fits after it see them from the clean points' covariance; clean points
#: it left out come back when they pass the cut.
FORCED_TRIM_SHARE = 0.02
#: For the forced trim, a point's distance counts only components at least this heavy: a
#: glitch far from the data can take a component of its own (at distance 0 from it).
EXPLAINING_WEIGHT = 0.02
#: The forced trim runs only after a suspect fit (`suspect`): a component whose points' median
#: chi-square probability is below this has a covariance stretched by about 1.35 or more
#: (in two dimensions); a component of fewer points than INFLATION_MIN_POINTS is not judged.
INFLATED_MEDIAN = 0.4
INFLATION_MIN_POINTS = 20
#: Fits at most: the first, the forced trim's, then refits while the points left out change.
TRIM_ROUNDS = 5
#: At most this share of the points inside the fence is trimmed by the cut (the farthest
#: first): a model that misses most of its data is the guards' business, not the trim's.
MAX_TRIM_SHARE = 0.05

BEYOND_FENCE = "beyond_fence"
IMPLAUSIBLE = "implausible"
REASONS = (BEYOND_FENCE, IMPLAUSIBLE)


def fence(points: np.ndarray, group: PointGroup = ONE_PROCESS) -> tuple[np.ndarray, np.ndarray]:
    """The fence's (lower, upper) bound per coordinate ((D,) each; +-inf where it has none),
    from the observed values of every process in `group`."""
    x = np.asarray(points, np.float64)
    # Quantiles at data points on the inner side (no interpolation towards a glitch: in a
    # window of 10 points, the 95 % quantile interpolated half way to a glitch at 1e9).
    columns = [c[~np.isnan(c)] for c in x.T]
    counts = group.total(np.array([len(c) for c in columns], np.int64))
    lo_ranks = [quantile_rank(int(n), FENCE_QUANTILE, "higher") for n in counts]
    hi_ranks = [quantile_rank(int(n), 1.0 - FENCE_QUANTILE, "lower") for n in counts]
    bounds = group.kth_smallest(columns + columns, lo_ranks + hi_ranks)
    lo, hi = bounds[: len(columns)], bounds[len(columns) :]
    span = hi - lo
    none = ~(span > 0)  # the middle 90 % is one value: its span says nothing of scale
    lower = np.where(none, -np.inf, lo - FENCE_SPANS * span)
    upper = np.where(none, np.inf, hi + FENCE_SPANS * span)
    return lower, upper


def inside_fence(points: np.ndarray, group: PointGroup = ONE_PROCESS) -> np.ndarray:
    """(N,) True for each point whose observed coordinates all lie inside the fence."""
    x = np.asarray(points, np.float64)
    lower, upper = fence(x, group)
    with np.errstate(invalid="ignore"):
        outside = (x < lower) | (x > upper)  # NaN (missing) compares False
    return np.asarray(~outside.any(axis=1))


def mahalanobis_sq(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """(N, K) squared Mahalanobis distance of each point to each component, over the point's
    observed coordinates: -2 (log N(x) - log N(loc)), both the marginal on those coordinates.
    NaN where a component has no usable covariance."""
    x = np.asarray(points, np.float64)
    with np.errstate(all="ignore"):
        log_pdf = component_log_pdf(x, params)
        observed = ~np.isnan(x)
        locs = np.asarray(params.locs, np.float64)
        peak = np.empty_like(log_pdf)
        patterns, which = np.unique(observed, axis=0, return_inverse=True)
        for i, keep in enumerate(patterns):
            centres = np.where(keep, locs, np.nan)  # each component's centre, as the point sees it
            peak[which.ravel() == i] = np.diagonal(component_log_pdf(centres, params))
        return np.maximum(-2.0 * (log_pdf - peak), 0.0)


def nearest_distance_sq(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """(N,) squared Mahalanobis distance to the nearest component with a usable covariance
    (NaN where none has one)."""
    d2 = mahalanobis_sq(points, params)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.fmin.reduce(d2, axis=1))


def beyond_cut(points: np.ndarray, params: MixtureParams) -> np.ndarray:
    """(N,) True for each point farther from every component than the trim's cut (the
    chi-square quantile at 1 - TRIM_P_VALUE for its observed coordinates); uncapped. A point
    with no distance at all (no usable component) is not beyond it."""
    x = np.asarray(points, np.float64)
    return _past_cut(x, nearest_distance_sq(x, params))


def _past_cut(x: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    df = (~np.isnan(x)).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.asarray(nearest > chdtri(df, TRIM_P_VALUE))


def implausible(
    points: np.ndarray,
    params: MixtureParams,
    forced_share: float = 0.0,
    group: PointGroup = ONE_PROCESS,
) -> np.ndarray:
    """(N,) True for each point the trim leaves out: beyond the cut, at most MAX_TRIM_SHARE of
    the points (the farthest), and, with forced_share, the farthest forced_share of them
    whatever their distance, measured to components of at least EXPLAINING_WEIGHT (a glitch
    can take a component of its own, at distance 0). Nothing when no point has a distance (no
    usable component). Shares and ranks are over every process in `group`."""
    x = np.asarray(points, np.float64)
    d2 = _distances(x, params, group)
    with np.errstate(invalid="ignore"):
        nearest = np.fmin.reduce(d2, axis=1)
    if not group.total(int(np.isfinite(nearest).any())):
        return np.zeros(len(x), bool)
    far = _past_cut(x, nearest)
    n = int(group.total(len(x)))
    cap = max(1, int(MAX_TRIM_SHARE * n))
    if group.total(int(far.sum())) > cap:
        far = group.largest(nearest, cap)
    forced = int(forced_share * n)
    if forced:
        heavy = np.asarray(params.weights) >= EXPLAINING_WEIGHT
        if heavy.any() and not heavy.all():
            with np.errstate(invalid="ignore"):
                nearest = np.fmin.reduce(d2[:, heavy], axis=1)
        far |= group.largest(nearest, forced)
    return far


def _distances(x: np.ndarray, params: MixtureParams, group: PointGroup) -> np.ndarray:
    """mahalanobis_sq, or LinAlgError on every process of the group when any cannot take it
    (a covariance that a process's pattern of missing coordinates makes singular)."""
    d2, failed = np.zeros((0, 0)), False
    try:
        d2 = mahalanobis_sq(x, params)
    except np.linalg.LinAlgError:
        failed = True
    if not group.all(not failed):
        raise np.linalg.LinAlgError("a component's covariance takes no distance")
    return d2


def suspect(points: np.ndarray, params: MixtureParams, group: PointGroup = ONE_PROCESS) -> bool:
    """Whether a fit may hide glitches from the cut: a component lighter than
    EXPLAINING_WEIGHT (a glitch's own), or one whose covariance its points do not fill (the
    median chi-square probability of their distances below INFLATED_MEDIAN: glitches have
    stretched it). Clean Gaussian components sit at 0.5. Over every process in `group`."""
    if np.min(params.weights) < EXPLAINING_WEIGHT:
        return True
    x = np.asarray(points, np.float64)
    d2 = _distances(x, params, group)
    if not group.total(int(np.isfinite(d2).any())):
        return False
    with np.errstate(invalid="ignore"):
        nearest = np.nanargmin(np.where(np.isnan(d2), np.inf, d2), axis=1)
        level = chdtr((~np.isnan(x)).sum(axis=1), d2[np.arange(len(x)), nearest])
    k = params.n_components
    mine = [level[nearest == c] for c in range(k)]
    sizes = group.total(np.array([len(m) for m in mine], np.int64))
    observed = [m[~np.isnan(m)] for m in mine]
    counts = group.total(np.array([len(m) for m in observed], np.int64))
    # The median: the middle value, or the mean of the two middle ones (numpy's nanmedian).
    middle = group.kth_smallest(
        observed + observed, [(n - 1) // 2 for n in counts] + [n // 2 for n in counts]
    )
    medians = (middle[:k] + middle[k:]) / 2.0
    with np.errstate(invalid="ignore"):
        stretched = (sizes >= INFLATION_MIN_POINTS) & (medians < INFLATED_MEDIAN)
    return bool(stretched.any())


class RobustFit(NamedTuple):
    """A fit of the points the rules kept, and what they left out."""

    result: FitResult  # seconds: every round's
    kept: np.ndarray  # (N,) bool over the points given
    excluded: dict[str, int]  # per reason (REASONS), zero counts included
    rounds: int  # fits run
    #: BIC of each K tried when the first fit chose K (`fit_robust(max_components=...)`).
    bics: dict[int, float] | None = None

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())


#: fit(points, warm_start): a fit of the points, from warm_start when it is not None.
FitFn = Callable[[np.ndarray, MixtureParams | None], FitResult]


def robust_fit(
    data: np.ndarray,
    fit: FitFn,
    refit: FitFn | None = None,
    n_components: int | None = None,
    group: PointGroup = ONE_PROCESS,
) -> RobustFit:
    """Fits the points inside the fence, then trims and refits (see the module's docstring).

    fit: the first fit (cold, or from the caller's warm start: the caller decides).
    refit: the later rounds' fits, each from the previous fit's parameters (default: fit).
        A caller that chose K in the first fit (BIC) passes a fixed-K fit here.
    n_components: when known, checked first (too few points for it is a DataError).
    group: the processes that hold the window between them (`data` is this one's part; the
        fits then run across them, `mixture.fit_hosts`); the rules rank the union of the parts
        and every process takes the same decisions. `kept` is over this process's points.
    Raises DataError when the data cannot be fit or the fence leaves too little to fit.

    The rounds: fit the points inside the fence; leave out any beyond the cut (and, if the fit
    is `suspect`, the farthest FORCED_TRIM_SHARE), and fit again; then, while the points
    beyond the last fit's cut are not those of a fit already made, fit those that are not. The
    result is the fit of the last set of points chosen, which for clean data is the first.
    """
    x = local_part(data) if group.spans_processes else as_points(data, n_components)
    fenced = inside_fence(x, group)
    refit = refit or fit
    result = fit(_subset(x, fenced, group), None)
    fitted: list[tuple[np.ndarray, FitResult]] = [(fenced, result)]
    latest = result
    seconds = result.seconds
    try:
        forced = FORCED_TRIM_SHARE if suspect(x[fenced], result.params, group) else 0.0
    except np.linalg.LinAlgError:  # no distance to take: the trim below stops at once too
        forced = 0.0
    kept = fenced
    while len(fitted) < TRIM_ROUNDS:
        wanted = fenced.copy()
        try:
            wanted[fenced] = ~implausible(x[fenced], latest.params, forced, group)
        except np.linalg.LinAlgError:  # a covariance no distance can be taken with
            break
        forced = 0.0
        done = next((r for rows, r in fitted if group.all(np.array_equal(rows, wanted))), None)
        if done is not None:
            kept, result = wanted, done
            break
        try:
            latest = refit(_subset(x, wanted, group), latest.params)
        except DataError:  # what is left cannot be fit (too few, no spread): keep the last fit
            break
        seconds += latest.seconds
        fitted.append((wanted, latest))
        kept, result = wanted, latest
    left_out = group.total(np.array([(~fenced).sum(), (fenced & ~kept).sum()], np.int64))
    excluded = {BEYOND_FENCE: int(left_out[0]), IMPLAUSIBLE: int(left_out[1])}
    return RobustFit(result._replace(seconds=seconds), kept, excluded, len(fitted))


def _subset(x: np.ndarray, rows: np.ndarray, group: PointGroup) -> np.ndarray:
    if not group.total(int(rows.any())):
        raise DataError("every point lies beyond the fence", "too_few_points")
    return x[rows]


def fit_robust(
    data: Any,
    key: Any,
    config: FitConfig,
    *,
    max_components: int | None = None,
    warm_start: MixtureParams | None = None,
    explore: bool = False,
    progress: Callable[[int, float], None] | None = None,
    programs: FitPrograms | None = None,
) -> RobustFit:
    """`robust_fit` with the project's fits: `fit_map` (or `fit_auto`, choosing K by BIC up to
    max_components, when that is given) first, from warm_start as those take it; then refits of
    the chosen K from the previous round's parameters, each with its own key (fold_in(key,
    round)). Arguments as for fit_map; the result's bics are fit_auto's.

    When the programs' mesh spans processes (`mixture.fit_hosts`), `data` is this process's
    part of the window and every process gets the same fit (K must then be given)."""
    programs = programs or default_programs()
    group: PointGroup = AllProcesses() if spans_processes(programs.mesh) else ONE_PROCESS
    if group.spans_processes and max_components is not None:
        raise DataError("K is chosen by BIC in one process only: give K to fit across processes")
    bics: dict[int, float] | None = None

    def first(points: np.ndarray, _: MixtureParams | None) -> FitResult:
        nonlocal bics
        if max_components is None:
            return fit_map(
                points,
                key,
                config,
                warm_start=warm_start,
                explore=explore,
                progress=progress,
                programs=programs,
            )
        shown = None if progress is None else (lambda _k, step, loss: progress(step, loss))
        selection = fit_auto(
            points,
            key,
            config,
            max_components,
            warm_start=warm_start,
            explore=explore,
            progress=shown,
        )
        bics = selection.bics
        return selection.result

    rounds = 0

    def again(points: np.ndarray, previous: MixtureParams | None) -> FitResult:
        nonlocal rounds
        rounds += 1
        assert previous is not None
        cfg = dataclasses.replace(config, n_components=previous.n_components)
        # A component lighter than EXPLAINING_WEIGHT may have sat on the glitches just left
        # out: from that start alone a refit keeps it, empty, and one component spans the data.
        light = bool(np.min(previous.weights) < EXPLAINING_WEIGHT)
        return fit_map(
            points,
            jax.random.fold_in(key, 1000 + rounds),
            cfg,
            warm_start=previous,
            explore=light,
            programs=programs,
        )

    known = config.n_components if max_components is None else None
    fitted = robust_fit(data, first, again, known, group)
    return fitted._replace(bics=bics)
