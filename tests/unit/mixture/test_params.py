"""ModelParams: the JSON form round-trips, and anything unservable is rejected with a reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.params import FitMetadata, MixtureParams, ModelParams, ParamsError, seed_priors

GOOD = {
    "version": 3,
    "weights": [0.375, 0.625],
    "locs": [0.5, 11.0],
    "scale": 0.65,
    "metadata": {
        "fitted_at": "2026-01-01T00:00:00+00:00",
        "n_points": 5,
        "priors": seed_priors().to_json(),
    },
}


@pytest.mark.parametrize(
    ("locs", "scale", "per_component"),
    [
        ([0.5, 11.0], 0.65, False),
        ([[0.0, 1.0], [5.0, 6.0]], [1.0, 2.0], False),
        ([[0.0, 1.0], [5.0, 6.0]], [[1.0, 2.0], [0.5, 0.7]], True),
    ],
)
def test_round_trip(locs, scale, per_component):
    model = ModelParams.from_json({**GOOD, "locs": locs, "scale": scale})
    assert model.mixture.per_component_scale is per_component
    again = ModelParams.loads(model.dumps())
    assert again.version == 3
    assert again.metadata == model.metadata
    for a, b in zip(again.mixture, model.mixture, strict=True):
        assert_allclose(a, b)
    assert json.loads(model.dumps())["locs"] == locs


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"weights": [0.5, 0.6]}, "sum to 1"),
        ({"weights": [-0.5, 1.5]}, "non-negative"),
        ({"scale": -1.0}, "positive"),
        ({"scale": 0.0}, "positive"),
        ({"locs": [0.0, float("nan")]}, "finite"),
        ({"locs": [0.0, 1.0, 2.0]}, "K=2 rows"),
        ({"scale": [1.0, 2.0, 3.0]}, "D=1 entries"),
        ({"locs": [[0.0, 1.0], [2.0, 3.0]], "scale": 1.0}, "scalar scale needs D=1"),
        ({"version": "7"}, "integer"),
        ({"version": True}, "integer"),
        ({"weights": "abc"}, "numbers"),
        ({"locs": [[1.0], [1.0, 2.0]]}, "ragged|numbers"),
        ({"n_components": 3}, "disagrees"),
        ({"schema": "other/9"}, "unknown schema"),
        ({"weights": [True, False]}, "numbers"),
        ({"weights": ["0.5", "0.5"]}, "numbers"),
        ({"weights": [10**400, 1]}, "numbers"),
        ({"n_components": True}, "disagrees"),
        (
            {
                "schema": "gmm-params/2",
                "covariance": "tied",
                "weights": [1 / 200] * 200,
                "locs": [[0.0] * 200] * 200,
                "scale_tril": [[1.0 if i == j else 0.0 for j in range(200)] for i in range(200)],
            },
            "covariance entries",
        ),
    ],
)
def test_invalid_parameters_are_rejected(change, reason):
    with pytest.raises(ParamsError, match=reason):
        ModelParams.from_json({**GOOD, **change})


@pytest.mark.parametrize("field", ["version", "weights", "locs", "scale"])
def test_missing_fields(field):
    obj = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(ParamsError, match=f"missing field '{field}'"):
        ModelParams.from_json(obj)


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        b'{"version": NaN}',
        b'{"weights": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    ],
)
def test_not_an_object(text):
    with pytest.raises(ParamsError):
        ModelParams.loads(text)


def test_constructor_validates_too():
    with pytest.raises(ParamsError):
        ModelParams(1, MixtureParams(np.array([1.0]), np.array([[0.0]]), np.array([-1.0])))


def test_metadata_keeps_unknown_fields():
    meta = FitMetadata.from_json({"n_points": 4, "trainer": "x"})
    assert meta.n_points == 4
    assert meta.to_json()["trainer"] == "x"
