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


def check_not_worse(
    new_log_likelihood: float, current_log_likelihood: float, max_regression: float
) -> Rejection | None:
    """The new fit's mean log p(x) on the window is at most max_regression below the current
    model's on the same window."""
    if new_log_likelihood >= current_log_likelihood - max_regression:
        return None
    return Rejection(
        "worse_than_current",
        f"mean log-likelihood {new_log_likelihood:.4f} vs the current model's "
        f"{current_log_likelihood:.4f}",
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
