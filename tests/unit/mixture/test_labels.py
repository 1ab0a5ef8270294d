"""Stable labels: a refit is matched to the current model, whatever order the fit returned."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from mixture.labels import align_components, order_by_location, permute
from mixture.params import MixtureParams

CURRENT = MixtureParams(np.array([0.7, 0.3]), np.array([[9.0], [2.0]]), np.array([1.0]))


def test_a_refit_in_the_other_order_is_put_back():
    refit = MixtureParams(np.array([0.32, 0.68]), np.array([[2.3], [9.3]]), np.array([1.1]))
    aligned = align_components(refit, CURRENT)
    assert_allclose(aligned.locs[:, 0], [9.3, 2.3])  # component 0 stays the upper mode
    assert_allclose(aligned.weights, [0.68, 0.32])


def test_per_component_scales_move_with_their_component():
    current = MixtureParams(
        np.array([0.2, 0.5, 0.3]), np.array([[0, 0], [5, 5], [0, 9.0]]), np.ones((3, 2))
    )
    refit = permute(
        MixtureParams(
            np.array([0.21, 0.49, 0.3]),
            np.array([[0.2, 0.1], [5.1, 4.8], [0.3, 9.2]]),
            np.array([[1, 1], [2, 2], [3, 3.0]]),
        ),
        np.array([2, 0, 1]),
    )
    aligned = align_components(refit, current)
    assert_allclose(aligned.scale[:, 0], [1, 2, 3])
    assert_allclose(aligned.weights, [0.21, 0.49, 0.3])


def test_first_fit_is_ordered_by_location():
    params = MixtureParams(
        np.array([0.5, 0.2, 0.3]), np.array([[4.0], [-1.0], [2.0]]), np.array([1.0])
    )
    assert order_by_location(params).locs[:, 0].tolist() == [-1.0, 2.0, 4.0]


def test_a_new_component_takes_the_next_label():
    current = MixtureParams(np.array([0.5, 0.5]), np.array([[5.0], [0.0]]), np.array([1.0]))
    refit = MixtureParams(
        np.array([0.2, 0.3, 0.5]), np.array([[10.0], [0.1], [5.1]]), np.array([1.0])
    )
    assert align_components(refit, current).locs[:, 0].tolist() == [5.1, 0.1, 10.0]


def test_a_removed_component_frees_its_label():
    current = MixtureParams(np.full(3, 1 / 3), np.array([[0.0], [20.0], [10.0]]), np.array([1.0]))
    # The component at 20 (label 1) is gone; the one at 10 (label 2) takes label 1.
    refit = MixtureParams(np.array([0.5, 0.5]), np.array([[10.2], [0.1]]), np.array([1.0]))
    assert align_components(refit, current).locs[:, 0].tolist() == [0.1, 10.2]


def test_full_covariances_align_by_their_spread():
    tril = np.stack([np.eye(2), 2 * np.eye(2)])
    current = MixtureParams(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [5.0, 5.0]]), tril)
    refit = permute(current, np.array([1, 0]))
    aligned = align_components(refit, current)
    assert_allclose(aligned.locs, current.locs)
    assert_allclose(aligned.scale, current.scale)


def test_a_different_dimension_falls_back_to_location_order():
    refit = MixtureParams(
        np.array([0.2, 0.3, 0.5]), np.array([[3.0, 0], [1.0, 0], [2.0, 0]]), np.array([1.0, 1.0])
    )
    assert align_components(refit, CURRENT).locs[:, 0].tolist() == [1.0, 2.0, 3.0]
