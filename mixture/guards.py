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
    candidate_log_likelihood: float,
    served_log_likelihood: float,
    needed_records: int,
    tolerance: float,
) -> str | Rejection:
    """Promote a candidate scored in shadow once `needed_records` records were scored by both
    models, if its mean log p(x) on them is at most `tolerance` nats below the served model's;
    PENDING before that."""
    if records < needed_records:
        return PENDING
    candidate = candidate_log_likelihood / records
    served = served_log_likelihood / records
    if candidate >= served - tolerance:
        return PROMOTE
    return Rejection(
        "worse_in_shadow",
        f"mean log-likelihood in shadow {candidate:.4f} vs the served model's {served:.4f} "
        f"over {records} records",
    )
