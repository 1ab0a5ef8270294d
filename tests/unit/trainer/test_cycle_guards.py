"""`Trainer.fit` and `Trainer.check` on real fits (no broker): glitches are left out and counted,
and a refit that leaves out data the current model explains is rejected."""

from __future__ import annotations

import asyncio

import jax
import numpy as np
import pytest

from mixture.guards import Rejection
from mixture.params import FitMetadata, MixtureParams, ModelParams
from trainer.cycle import Fitted, Trainer
from trainer.metrics import TrainerMetrics
from trainer.settings import TrainerSettings


def trainer(**env: str) -> Trainer:
    return Trainer(
        TrainerSettings.from_env({"GMM_TRAIN_RESTARTS": "10", "GMM_COVARIANCE": "diag", **env}),
        TrainerMetrics(),
    )


def current(locs: list[float], weights: list[float], sds: list[float]) -> ModelParams:
    mixture = MixtureParams(
        np.array(weights), np.array([[v] for v in locs]), np.array([[s] for s in sds])
    )
    return ModelParams(1, mixture, FitMetadata(), "diag")


def fit_and_check(t: Trainer, x: np.ndarray, warm: ModelParams | None):
    fitted = asyncio.run(t.fit(x, jax.random.PRNGKey(0), warm))
    assert not isinstance(fitted, Rejection), fitted
    return fitted, t.check(fitted, x, warm)


def test_glitches_are_left_out_counted_and_the_refit_passes():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0.0, 1.0, 600), rng.normal(8.0, 1.0, 400), 1e9, -1e15][:, None]
    t = trainer()
    _, checked = fit_and_check(t, x, current([0.0, 8.0], [0.6, 0.4], [1.0, 1.0]))
    assert isinstance(checked, Fitted), checked
    assert checked.excluded["beyond_fence"] == 2 and not checked.kept[-2:].any()
    counted = t.metrics.excluded_points.labels(reason="beyond_fence")._value.get()
    assert counted == 2
    np.testing.assert_allclose(np.sort(checked.result.params.locs[:, 0]), [0.0, 8.0], atol=0.2)


@pytest.mark.parametrize("share", [0.02, 0.04])
def test_a_refit_that_drops_a_real_cluster_the_current_model_explains_is_rejected(share):
    """A real cluster of 2-4 % far beyond the rest is fenced out of the refit; the trimmed-mean
    regression guard cannot see a loss confined to so few points, this guard can."""
    rng = np.random.default_rng(1)
    n = 2000
    far = int(share * n)
    x = np.r_[rng.normal(0.0, 1.0, n - far), rng.normal(500.0, 1.0, far)][:, None]
    t = trainer(GMM_COMPONENTS="2")
    served = current([0.0, 500.0], [1 - share, share], [1.0, 1.0])
    fitted, checked = fit_and_check(t, x, served)
    assert fitted.excluded["beyond_fence"] == far
    assert isinstance(checked, Rejection) and checked.reason == "left_out_explained"


def test_a_served_model_of_another_k_is_not_replaced_unjudged():
    """The served model has K=3 (published from a file, or GMM_COMPONENTS changed): the
    refit of K=2 cannot warm-start from it, and is judged against it all the same."""
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0.0, 1.0, 500), rng.normal(20.0, 1.0, 500), rng.normal(40.0, 1.0, 500)]
    t = trainer(GMM_COMPONENTS="2")
    t.current = current([0.0, 20.0, 40.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 1.0, 1.0])
    assert t._warm_start() is None
    _, checked = fit_and_check(t, x[:, None], None)
    assert isinstance(checked, Rejection), checked
    assert checked.reason in ("worse_than_current", "left_out_explained")
