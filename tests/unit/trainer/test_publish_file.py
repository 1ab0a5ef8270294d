"""`gmm-trainer publish`'s checks, without a broker: the trainer's guards on a model made
elsewhere, labels aligned, an earlier publication's provenance dropped, and the CLI's one-line
errors before it connects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_allclose

from mixture.guards import Rejection
from mixture.params import FitMetadata, MixtureParams, ModelParams
from trainer.cli import main as trainer_main
from trainer.publish_file import (
    Judged,
    as_new_publication,
    blocked_log_likelihood,
    check_params,
    same_parameters,
)
from trainer.settings import TrainerSettings

SETTINGS = TrainerSettings()


def model(locs, weights=(0.5, 0.5), scale=(1.0, 1.0)) -> ModelParams:
    return ModelParams(0, MixtureParams(np.array(weights), np.array(locs, float), np.array(scale)))


def data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([0, 0], 1, (200, 2)), rng.normal([6, 6], 1, (200, 2))])


def on(points: np.ndarray, source: str = "points.csv") -> list[Judged]:
    return [Judged(source, points)]


def test_a_first_model_is_ordered_by_location():
    checked = check_params(model([[6, 6], [0, 0]]), on(data()), None, SETTINGS)
    assert isinstance(checked, ModelParams)
    assert_allclose(checked.mixture.locs, [[0, 0], [6, 6]])


def test_a_refit_keeps_the_served_models_labels():
    served = model([[6.2, 6.1], [0.1, -0.1]]).with_version(4)
    checked = check_params(model([[0, 0], [6, 6]]), on(data()), served, SETTINGS)
    assert isinstance(checked, ModelParams)
    assert_allclose(checked.mixture.locs, [[6, 6], [0, 0]])


@pytest.mark.parametrize(
    ("candidate", "served", "reason"),
    [
        (model([[30, 30], [40, 40]]), model([[0, 0], [6, 6]]), "left_out_explained"),
        (model([[0, 0], [6, 6]], scale=(4.0, 4.0)), model([[0, 0], [6, 6]]), "worse_than_current"),
        (model([[0, 0], [6, 6]], weights=(1 - 1e-5, 1e-5)), None, "collapsed"),
        (
            ModelParams(0, MixtureParams(np.ones(1), np.zeros((1, 3)), np.ones(3))),
            None,
            "dimension_mismatch",
        ),
        (
            model([[0, 0], [6, 6]]),
            ModelParams(3, MixtureParams(np.ones(1), np.zeros((1, 3)), np.ones(3))),
            "dimension_mismatch",
        ),
    ],
)
def test_the_trainers_guards_refuse(candidate, served, reason):
    checked = check_params(candidate, on(data()), served, SETTINGS)
    assert isinstance(checked, Rejection) and checked.reason == reason, checked


def test_a_dropped_cluster_too_few_points_and_every_judged_set_count():
    x = data()
    rng = np.random.default_rng(1)
    small = np.concatenate([x, rng.normal([20, -20], 0.5, (12, 2))])  # 2.9 % of the points
    served = ModelParams(
        2,
        MixtureParams(
            np.array([0.49, 0.48, 0.03]),
            np.array([[0, 0], [6, 6], [20, -20.0]]),
            np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]]),
        ),
        covariance="diag",
    )
    dropped = model([[0, 0], [6, 6]], scale=((1.0, 1.0), (1.0, 1.0)))
    dropped = dataclasses.replace(dropped, covariance="diag")
    # The trimmed mean does not see 12 points; the points-explained guard does.
    checked = check_params(dropped, on(small), served, SETTINGS)
    assert isinstance(checked, Rejection) and checked.reason == "left_out_explained", checked
    assert checked.detail.startswith("points.csv: ")
    few = check_params(model([[0, 0], [6, 6]]), on(x[:19]), None, SETTINGS)
    assert isinstance(few, Rejection) and few.reason == "too_few_points"
    # Judged on the window and the file: the file alone passing is not enough.
    shifted = x + 30.0
    both = [Judged("input window", shifted), Judged("points.csv", x)]
    checked = check_params(model([[0, 0], [6, 6]]), both, model([[30, 30], [36, 36]]), SETTINGS)
    assert isinstance(checked, Rejection) and checked.detail.startswith("input window: ")


def test_an_earlier_publications_provenance_is_dropped_and_its_time_is_now():
    meta = FitMetadata(
        fitted_at="9999-01-01T00:00:00+00:00",
        n_points=10,
        extra={"published_by": "rollback", "rolled_back_from": 2, "stage": "candidate", "aic": 1.0},
    )
    fresh = as_new_publication(
        dataclasses.replace(model([[0, 0], [6, 6]]), metadata=meta), now="2026-12-03T00:00:00+00:00"
    )
    assert fresh.metadata.extra == {"aic": 1.0, "file_fitted_at": "9999-01-01T00:00:00+00:00"}
    assert fresh.metadata.n_points == 10 and fresh.metadata.fitted_at == "2026-12-03T00:00:00+00:00"


def test_blocked_log_likelihood_and_same_parameters():
    m = model([[0, 0], [6, 6]])
    x = data()
    import mixture.evaluate as ev
    import trainer.publish_file as pf

    whole = ev.log_likelihood(x, m.mixture)
    old = pf.BLOCK_VALUES
    try:
        pf.BLOCK_VALUES = 7  # blocks of 1 row
        assert_allclose(blocked_log_likelihood(x, m.mixture), whole, rtol=1e-15)
    finally:
        pf.BLOCK_VALUES = old
    assert same_parameters(m, m.with_version(9))
    assert not same_parameters(m, model([[0, 0], [6, 6.001]]))


def test_cli_errors_are_one_line_before_any_connection(tmp_path, capsys):
    points = tmp_path / "points.csv"
    points.write_text("a,b\n" + "".join(f"{u},{v}\n" for u, v in data()))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "gmm-params/2", "covariance": "diag", "version": 1}')
    good = tmp_path / "good.json"
    good.write_text(model([[0, 0], [6, 6]]).dumps())
    for args, says in (
        (["--params", str(good), "--out", str(tmp_path / "no" / "out.json")], "cannot write"),
        (["--params", str(bad), "--data", str(points)], "missing field 'weights'"),
        (["--params", str(tmp_path / "no.json"), "--data", str(points)], "cannot read"),
        (["--params", str(good), "--data", str(tmp_path / "no.csv")], "cannot read"),
        (["--params", str(points), "--data", str(points)], "not valid JSON"),
    ):
        assert trainer_main(["publish", *args]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
