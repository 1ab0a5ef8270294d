"""The trainer's window: which of the records read become the points fitted."""

from __future__ import annotations

import json

import numpy as np
from numpy.testing import assert_allclose

from trainer.window import _valid_points


def records(*xs: object) -> list[tuple[int, bytes | None]]:
    return [(t, json.dumps({"x": x}).encode()) for t, x in enumerate(xs)]


def test_without_a_model_the_most_common_dimension_wins():
    """A stray record of another dimension at the start cannot decide the first model's D."""
    window = _valid_points(records([1, 2, 3], [0, 1], [2, 3], [4, 5]), None, 65536)
    assert_allclose(window.points, [[0, 1], [2, 3], [4, 5]])
    assert window.invalid == {"wrong_dim": 1}
    assert window.n_records == 4


def test_a_tie_goes_to_the_newest_dimension():
    window = _valid_points(records([1, 2, 3], [0, 1]), None, 65536)
    assert window.points.shape == (1, 2)


def test_a_models_dimension_is_kept_and_bad_records_are_counted():
    window = _valid_points([*records(1.0, [1, 2], "q"), (9, None)], 1, 65536)
    assert_allclose(window.points, [[1.0]])
    assert window.invalid == {"wrong_dim": 1, "not_numeric": 1, "tombstone": 1}


def test_missing_coordinates_become_nan():
    window = _valid_points(records([1, None], [2, 3]), None, 65536)
    assert np.isnan(window.points[0, 1])


def test_a_point_of_more_dimensions_than_any_model_is_not_kept():
    """A 60 KB record of zeros decodes to 20,000 coordinates: the window never holds them."""
    wide = json.dumps({"x": [0] * 20_000}).encode()
    assert len(wide) < 65536
    window = _valid_points([(0, wide), (1, b'{"x": [1, 2]}')], None, 65536)
    assert window.invalid == {"wrong_dim": 1}
    assert_allclose(window.points, [[1, 2]])
