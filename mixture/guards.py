"""The checks a fit must pass before it is published: pure functions of the fit and its data.

Each returns None when the fit passes, or a Rejection with a short reason code (the trainer's
`gmm_trainer_rejected_total{reason}` label) and a one-line detail for the log.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mixture.labels import component_sds
from mixture.params import MixtureParams

#: A component whose spread is below this fraction of the data's, in every direction it has,
#: has collapsed onto a few repeated values. The covariance floor (reg_covar, 1e-6 of each
#: column's variance by default: a spread of 1e-3) keeps fits above it; this catches fits with
#: the floor off (GMM_REG_COVAR=0). A component on repeated values at the floor is a valid
#: fit of such data; the weight half of this check still applies to it.
COLLAPSED_SPREAD = 1e-6


class Rejection(NamedTuple):
    reason: str
    detail: str


def check_finite(params: MixtureParams, final_loss: float) -> Rejection | None:
    """Every parameter and the final loss are finite numbers."""
    if all(np.all(np.isfinite(np.asarray(a))) for a in params) and np.isfinite(final_loss):
        return None
    return Rejection("not_finite", "the fit produced NaN or infinity")


def check_not_collapsed(
    params: MixtureParams, points: np.ndarray, min_weight: float
) -> Rejection | None:
    """No component lighter than min_weight or (nearly) without spread."""
    spread = np.nanstd(points, axis=0)
    if np.min(params.weights) >= min_weight and not np.any(
        component_sds(params) < COLLAPSED_SPREAD * spread
    ):
        return None
    weights = np.round(np.asarray(params.weights), 4)
    return Rejection("collapsed", f"a component collapsed (weights {weights})")


#: The regression guard's trimmed mean leaves out this share of the per-point differences at
#: each end: up to that share of the window (glitches, whichever way they favour) cannot move it.
TRIM_SHARE = 0.025


def trimmed_mean(values: np.ndarray, share: float = TRIM_SHARE) -> float:
    """The mean of `values` without the floor(share * n) lowest and as many highest (at least
    one each when n >= 3): one extreme value cannot move it by more than the spread of the
    rest. NaN counts as the lowest value (-inf) and inf as the highest; NaN for no values."""
    v = np.sort(np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf, posinf=np.inf))
    n = len(v)
    if n == 0:
        return float("nan")
    cut = int(share * n)
    if n >= 3:
        cut = max(cut, 1)
    middle = v[cut : n - cut]
    with np.errstate(invalid="ignore"):
        return float(middle.mean())


def check_not_worse(
    new_log_likelihood: np.ndarray, current_log_likelihood: np.ndarray, max_regression: float
) -> Rejection | None:
    """The new fit is at most max_regression nats per point below the current model on the
    window, by the trimmed mean (TRIM_SHARE at each end) of the per-point differences
    log p_new(x) - log p_current(x): a glitch, whose log p under either model can be -1e29,
    dominates a plain mean of log p(x) but is trimmed here.

    new_log_likelihood, current_log_likelihood: (N,) log p(x) of the window's points under
    each model, in the same order."""
    difference = trimmed_mean(
        np.asarray(new_log_likelihood, np.float64) - np.asarray(current_log_likelihood, np.float64)
    )
    if difference >= -max_regression:
        return None
    return Rejection(
        "worse_than_current",
        f"mean log-likelihood {difference:+.4f} per point vs the current model's (trimmed mean "
        f"over {len(new_log_likelihood)} points)",
    )


#: A refit may leave out (mixture.robust) at most this share of the window that the current
#: model explains: above the share of glitches the fit is promised to withstand (1 %), what it
#: leaves out is data, e.g. a real cluster lighter than the fence's quantiles.
MAX_LEFT_OUT_SHARE = 0.01


def check_keeps_explained(left_out_explained: int, window: int) -> Rejection | None:
    """The refit left out (fence or trim) at most MAX_LEFT_OUT_SHARE of the window's points
    among those the current model explains (within its trim cut): the trimmed-mean regression
    guard cannot see a loss confined to that few points, this guard can."""
    if left_out_explained <= MAX_LEFT_OUT_SHARE * window:
        return None
    return Rejection(
        "left_out_explained",
        f"the fit left out {left_out_explained} of {window} points that the current model "
        f"explains (over {MAX_LEFT_OUT_SHARE:.0%})",
    )


#: A candidate's shadow verdict: still scoring, promote it, or a Rejection.
PENDING = "pending"
PROMOTE = "promote"


def check_shadow(
    records: int,
    clipped_difference_sum: float,
    needed_records: int,
    tolerance: float,
    difference: float,
) -> str | Rejection:
    """Promote a candidate scored in shadow once `needed_records` records were scored by both
    models, if the clipped mean difference on them is at least -`tolerance` nats; PENDING before
    that.

    clipped_difference_sum: candidate minus served log p(x) per record, each clipped to a bound
    of a few nats (`wire.shadow_report.CLIP_NATS`), summed over the records. Its mean is what is
    judged: one record moves it by at most twice the bound over `records`, so a single glitch
    (a record far out, log p about -1e17 under one model and less negative under the other)
    cannot swing the verdict either way, while a candidate worse by a few nats on many records
    is still rejected. difference: the plain (unclipped) mean difference, for the detail only.
    """
    if records < needed_records:
        return PENDING
    clipped = clipped_difference_sum / records if records else 0.0
    if clipped >= -tolerance:
        return PROMOTE
    return Rejection(
        "worse_in_shadow",
        f"clipped mean log-likelihood difference in shadow {clipped:+.4f} nats per record vs "
        f"the served model over {records} records, below -{tolerance:g} (unclipped mean "
        f"{difference:+.4g})",
    )
