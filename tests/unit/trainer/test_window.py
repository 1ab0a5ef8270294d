"""The trainer's window: which of the records read become the points fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from trainer.window_builder import WindowBuilder, _valid_points


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


def point(x: object) -> bytes:
    return json.dumps({"x": x}).encode()


def test_the_newest_records_of_every_chunk_make_the_window_oldest_first():
    """Two partitions' records arrive interleaved in chunks: the window keeps the newest by
    timestamp, invalid ones included in the count, and returns the points oldest first."""

    def builder() -> WindowBuilder:
        b = WindowBuilder(8, 1, 65536)
        b.add([point(1.0), point(3.0), b"junk", point(5.0)], np.array([1, 3, 4, 5]))
        b.add([point(2.0), point(6.0), point(7.0), None], np.array([2, 6, 7, 8]))
        return b

    window = builder().window(5)  # timestamps 4..8: junk, 5, 6, 7, a tombstone
    assert_allclose(window.points, [[5.0], [6.0], [7.0]])
    assert window.invalid == {"not_json": 1, "tombstone": 1}
    assert window.n_records == 5
    assert_allclose(builder().window(8).points, [[1.0], [2.0], [3.0], [5.0], [6.0], [7.0]])


def test_records_at_the_cut_fill_the_window_exactly():
    builder = WindowBuilder(6, 1, 65536)
    builder.add([point(float(i)) for i in range(6)], np.array([1, 2, 2, 2, 2, 3]))
    window = builder.window(3)  # the newest and two of the four at timestamp 2
    assert window.n_records == 3 and len(window.points) == 3
    assert window.points[-1, 0] == 5.0


def test_a_builder_refuses_more_records_than_it_was_sized_for():
    builder = WindowBuilder(2, 1, 65536)
    builder.add([point(1.0)], np.array([0]))
    with pytest.raises(ValueError, match="sized for"):
        builder.add([point(1.0), point(2.0)], np.array([1, 2]))


def test_undecodable_stand_ins_are_counted_as_such():
    builder = WindowBuilder(3, 1, 65536)
    builder.add([point(1.0), None, None], np.array([0, 1, 2]), undecodable=[2])
    assert builder.window(3).invalid == {"tombstone": 1, "undecodable": 1}


def test_points_over_many_blocks_come_back_whole(monkeypatch):
    """Blocks of 3 rows, chunks of 4 records, timestamps out of order: every point once, in
    timestamp order."""
    from trainer import window_builder as window_module

    monkeypatch.setattr(window_module, "BLOCK_BYTES", 8 * 2 * 3)
    stamps = np.array([5, 1, 9, 3, 7, 0, 8, 2, 6, 4])
    builder = WindowBuilder(10, 2, 65536)
    for i in range(0, 10, 4):
        builder.add([point([float(t), 1.0]) for t in stamps[i : i + 4]], stamps[i : i + 4])
    assert len(builder._blocks[2].blocks) == 4
    window = builder.window(7)
    assert_allclose(window.points[:, 0], [3, 4, 5, 6, 7, 8, 9])
