"""Stable component labels across refits.

A mixture is label-free: a refit may return the same components in any order. Consumers see
labels, so each new fit is permuted to match the current model (component 0 stays component 0
while the data drift slowly), and a first fit is ordered by location.
"""

from __future__ import annotations

import numpy as np

from mixture.covariance import covariance_matrices
from mixture.params import MixtureParams


def permute(params: MixtureParams, order: np.ndarray) -> MixtureParams:
    """Components reordered: new component i is old component order[i]."""
    scale = np.asarray(params.scale)
    return MixtureParams(
        np.asarray(params.weights)[order],
        np.asarray(params.locs)[order],
        scale[order] if scale.ndim >= 2 else scale,
    )


def order_by_location(params: MixtureParams) -> MixtureParams:
    """Components sorted by location (first dimension first): the labels of a first fit."""
    locs = np.asarray(params.locs)
    order = np.lexsort(locs.T[::-1])
    return permute(params, order)


def component_sds(params: MixtureParams) -> np.ndarray:
    """(K, D) standard deviation of each component along each dimension, any layout."""
    cov = covariance_matrices(params.scale, params.n_components)
    return np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))


def align_components(new: MixtureParams, reference: MixtureParams) -> MixtureParams:
    """new, permuted so each component sits where the closest reference component was.

    The cost is the squared distance between locations in units of the reference's spread, and
    the assignment is the minimum-cost matching (Hungarian algorithm). K may differ:

    - K grew: every reference component is matched and keeps its label; the new components
      take the next labels, K_ref, K_ref + 1, ... (in order of location).
    - K shrank: the reference components left unmatched are removed; matched components keep
      their label when it still exists (< K), and the others take the freed labels, lowest
      first (so a removed component's label is reused by another component).
    """
    if new.dim != reference.dim:
        return order_by_location(new)
    sd = component_sds(reference)  # (K_ref, D)
    diff = np.asarray(reference.locs)[:, None, :] - np.asarray(new.locs)[None, :, :]
    cost = ((diff / sd[:, None, :]) ** 2).sum(-1)  # (reference r, new j)
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize is slow to import

    rows, cols = linear_sum_assignment(cost)
    k = new.n_components
    order = np.full(k, -1)
    displaced = []
    for r, j in sorted(zip(rows.tolist(), cols.tolist(), strict=True)):
        if r < k:
            order[r] = j
        else:
            displaced.append(j)
    unmatched = [j for j in np.lexsort(np.asarray(new.locs).T[::-1]) if j not in set(cols)]
    free = iter(np.flatnonzero(order < 0))
    for j in displaced + unmatched:
        order[next(free)] = j
    return permute(new, order)
