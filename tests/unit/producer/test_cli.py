"""`gmm-produce` (producer.cli): the records it generates, and bad arguments, without a broker."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from producer.cli import main, parse_locs, replay, synthetic


def args(**overrides) -> argparse.Namespace:
    base = dict(
        count=10, locs="0,10", scale=1.0, weights="", seed=0, id_prefix="p", replay=None, rate=0
    )
    return argparse.Namespace(**{**base, **overrides})


def test_parse_locs_1d_and_2d():
    assert parse_locs("0,10").shape == (2, 1)
    assert parse_locs("0,0;5,5;9,0").tolist() == [[0, 0], [5, 5], [9, 0]]


def test_synthetic_records_have_unique_ids_as_keys():
    records = list(synthetic(args(count=5)))
    assert [k for k, _ in records] == [f"p-{i}".encode() for i in range(5)]
    values = [json.loads(v) for _, v in records]
    assert [v["id"] for v in values] == [f"p-{i}" for i in range(5)]
    assert all(isinstance(v["x"], float) for v in values)


def test_synthetic_2d_points_are_lists_and_follow_the_weights():
    values = [
        json.loads(v) for _, v in synthetic(args(count=4000, locs="0,0;50,50", weights="1,3"))
    ]
    xs = np.array([v["x"] for v in values])
    assert xs.shape == (4000, 2)
    assert abs((xs[:, 0] > 25).mean() - 0.75) < 0.03


def test_synthetic_is_reproducible_by_seed():
    assert list(synthetic(args(seed=3))) == list(synthetic(args(seed=3)))
    assert list(synthetic(args(seed=3))) != list(synthetic(args(seed=4)))


def test_synthetic_rejects_weights_of_the_wrong_length():
    with pytest.raises(ValueError, match="needs 2 non-negative"):
        next(synthetic(args(weights="1,2,3")))


def test_replay_sends_lines_as_they_are_up_to_count(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_bytes(b'{"x": 1}\n\n{"x": 2}\n')
    assert list(replay(args(replay=str(path), count=0))) == [
        (None, b'{"x": 1}'),
        (None, b'{"x": 2}'),
    ]
    assert [v for _, v in replay(args(replay=str(path), count=3))] == [
        b'{"x": 1}',
        b'{"x": 2}',
        b'{"x": 1}',
    ]


def test_bad_locs_is_one_line_and_exit_2(capsys):
    assert main(["--locs", "0,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("gmm-produce: error:")
