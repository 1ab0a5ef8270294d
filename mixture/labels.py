"""Stable component labels across refits.

A mixture is label-free: a refit may return the same components in any order. Consumers see
labels, so each new fit is permuted to match the current model (component 0 stays component 0
while the data drift slowly), and a first fit is ordered by location.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from mixture.params import MixtureParams


def permute(params: MixtureParams, order: np.ndarray) -> MixtureParams:
    """Components reordered: new component i is old component order[i]."""
    scale = np.asarray(params.scale)
    return MixtureParams(
        np.asarray(params.weights)[order],
        np.asarray(params.locs)[order],
        scale[order] if scale.ndim == 2 else scale,
    )


def order_by_location(params: MixtureParams) -> MixtureParams:
    """Components sorted by location (first dimension first): the labels of a first fit."""
    locs = np.asarray(params.locs)
    order = np.lexsort(locs.T[::-1])
    return permute(params, order)


def align_components(new: MixtureParams, reference: MixtureParams) -> MixtureParams:
    """new, permuted so each component sits where the closest reference component was.

    The cost is the squared distance between locations in units of the reference's scale, and
    the assignment is the minimum-cost matching (Hungarian algorithm).
    """
    if new.n_components != reference.n_components or new.dim != reference.dim:
        return order_by_location(new)
    ref_scale = np.asarray(reference.scale)
    if ref_scale.ndim == 1:
        ref_scale = np.broadcast_to(ref_scale, np.shape(reference.locs))
    diff = np.asarray(reference.locs)[:, None, :] - np.asarray(new.locs)[None, :, :]
    cost = ((diff / ref_scale[:, None, :]) ** 2).sum(-1)  # (reference k, new j)
    _, cols = linear_sum_assignment(cost)
    return permute(new, cols)
