"""The fit report: its files and summary, and a trainer that imports neither pyplot nor
scipy.stats before it has a report to write."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from mixture.evaluate import score
from mixture.fit import FitResult, to_model_params
from mixture.params import MixtureParams, seed_priors
from tests.conftest import ROOT
from trainer.report import _normal_pdf, write_report

pytestmark = pytest.mark.unit


def test_the_density_is_the_normal_pdf():
    x = np.linspace(-8.0, 9.0, 301)
    for loc, scale in [(0.0, 1.0), (2.5, 0.3), (-40.0, 12.0)]:
        assert_allclose(_normal_pdf(x, loc, scale), stats.norm.pdf(x, loc, scale), rtol=1e-12)


def test_a_report_has_its_pictures_and_summary(tmp_path):
    params = MixtureParams(np.array([0.4, 0.6]), np.array([[-1.0], [2.0]]), np.array([0.7]))
    points = np.random.default_rng(0).normal(size=(500, 1))
    result = FitResult(
        params=params,
        priors=seed_priors(1),
        init_loss=900.0,
        losses=np.array([900.0, 800.0, 790.0]),
        grad_norms={"locs": np.array([3.0, 1.0, 0.1])},
        n_steps=3,
        converged=True,
        seconds=0.5,
        n_points=500,
    )
    model = to_model_params(result, 7, 500, "2026-12-04T00:00:00Z")
    out = write_report(tmp_path / "v7", model, result, points, score(points, params), {"nan": 3})
    assert {p.name for p in out.iterdir()} == {
        "loss.png",
        "grad_norms.png",
        "density.png",
        "summary.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["window"] == 503 and summary["fitted_points"] == 500
    assert summary["excluded_points"] == {"nan": 3}
    assert summary["final_loss"] == 790.0


def test_the_trainer_imports_neither_pyplot_nor_scipy_stats():
    code = (
        "import sys, trainer.main; "
        "print(sorted({'matplotlib.pyplot', 'scipy.stats', 'sklearn'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
