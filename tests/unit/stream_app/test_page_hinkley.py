"""Page-Hinkley's test for a drop: value for value River's `PageHinkley(mode="down")`, which the
worker no longer imports (it imports scikit-learn and SciPy)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_equal
from river.drift import PageHinkley

from stream_app.page_hinkley import PageHinkleyDown
from tests.conftest import imported_by

pytestmark = pytest.mark.unit


def _rivers_statistic(ph: PageHinkley) -> float:
    # River keeps the sums private (river==0.26.1, pinned in pyproject.toml's dev extra).
    return float(ph._max_decrease - ph._sum_decrease)


@pytest.mark.parametrize(
    ("min_instances", "delta", "threshold", "alpha"),
    [(1, 0.5, 16.0, 1.0), (30, 0.005, 50.0, 1 - 0.0001), (5, 0.1, 3.0, 0.9), (1, 0.0, 1.0, 1.0)],
)
def test_every_update_matches_rivers_page_hinkley(min_instances, delta, threshold, alpha):
    """Equal statistics and alarms after every value, through drops, alarms and the restart
    after each alarm."""
    rng = np.random.default_rng(min_instances)
    xs = rng.standard_normal(3000)
    xs[700:1400] -= 2.0
    xs[2000:] += rng.standard_normal(1000) * 5 - 3.0
    xs[2500::97] = np.nan  # the detector never feeds these (drift.py skips them); River's
    xs[2600::89] = np.inf  # arithmetic on them is matched all the same
    xs[2700::83] = -np.inf
    ours = PageHinkleyDown(min_instances, delta, threshold, alpha)
    theirs = PageHinkley(min_instances, delta, threshold, alpha, mode="down")
    alarms = 0
    for x in xs.tolist():
        ours.update(x)
        theirs.update(x)
        assert ours.drift_detected == theirs.drift_detected
        assert_equal(ours.statistic, _rivers_statistic(theirs))  # exact; NaN equals NaN
        alarms += ours.drift_detected
    assert alarms >= 2  # the sequences do exercise alarms and restarts


def test_no_alarm_before_min_instances():
    ph = PageHinkleyDown(min_instances=10, delta=0.0, threshold=1.0, alpha=1.0)
    for x in [0.0, 0.0, 0.0, -100.0, -100.0]:
        ph.update(x)
        assert not ph.drift_detected
    assert ph.statistic > 1.0


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"threshold": float("nan")}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        PageHinkleyDown(**kwargs)


def test_the_worker_imports_neither_river_nor_scikit_learn():
    """The worker's modules as `gmm-worker` imports them: River's drift package imports
    scikit-learn (about a second of every worker start) and is needed only as this test's
    reference."""
    worker = "import stream_app.main, stream_app.app, stream_app.agents, stream_app.worker"
    assert imported_by(worker, {"river", "sklearn", "pandas"}) == []
