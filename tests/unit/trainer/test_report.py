"""The fit report: its files and summary, and a trainer that imports neither matplotlib nor
scipy.stats before it has a report to write."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from mixture.evaluate import score
from mixture.fit import FitResult, to_model_params
from mixture.params import MixtureParams, seed_priors
from tests.conftest import imported_by
from trainer.report import _normal_pdf, write_report

pytestmark = pytest.mark.unit


def test_the_density_is_the_normal_pdf():
    x = np.linspace(-8.0, 9.0, 301)
    for loc, scale in [(0.0, 1.0), (2.5, 0.3), (-40.0, 12.0)]:
        assert_allclose(_normal_pdf(x, loc, scale), stats.norm.pdf(x, loc, scale), rtol=1e-12)


def _fit(points: np.ndarray) -> tuple[FitResult, MixtureParams]:
    params = MixtureParams(np.array([0.4, 0.6]), np.array([[-1.0], [2.0]]), np.array([0.7]))
    result = FitResult(
        params=params,
        priors=seed_priors(1),
        init_loss=900.0,
        losses=np.array([900.0, 800.0, 790.0]),
        grad_norms={"locs": np.array([3.0, 1.0, 0.1])},
        n_steps=3,
        converged=True,
        seconds=0.5,
        n_points=len(points),
    )
    return result, params


def _report(directory, points: np.ndarray, version: int):
    result, params = _fit(points)
    model = to_model_params(result, version, len(points), "2026-12-04T00:00:00Z")
    return write_report(directory, model, result, points, score(points, params), {"nan": 3})


PICTURES = {"loss.png", "grad_norms.png", "density.png"}


def _pictures_ok(out) -> bool:
    return all((out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for name in PICTURES)


def test_a_report_has_its_pictures_and_summary(tmp_path):
    points = np.random.default_rng(0).normal(size=(500, 1))
    out = _report(tmp_path / "v7", points, 7)
    assert {p.name for p in out.iterdir()} == {*PICTURES, "summary.json"}
    assert _pictures_ok(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["window"] == 503 and summary["fitted_points"] == 500
    assert summary["excluded_points"] == {"nan": 3}
    assert summary["final_loss"] == 790.0


def test_every_figure_is_drawn_under_the_lock(tmp_path, monkeypatch):
    from trainer import report

    drawn = []

    def figure(width, height):
        assert report._DRAWING.locked()
        drawn.append((width, height))
        return unlocked_figure(width, height)

    unlocked_figure = report._figure
    monkeypatch.setattr(report, "_figure", figure)
    _report(tmp_path / "v1", np.random.default_rng(2).normal(size=(300, 1)), 1)
    assert len(drawn) == 3


def test_reports_drawn_on_two_threads_at_once_both_come_out(tmp_path):
    """The trainer draws reports on worker threads (a fit's, a posterior's); matplotlib is not
    thread-safe (without the report's lock this failed in its mathtext parser)."""
    points = np.random.default_rng(1).normal(size=(2000, 1))
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda v: _report(tmp_path / f"v{v}", points, v), range(1, 9)))
    assert all(_pictures_ok(out) for out in outs)
    assert [
        json.loads((o / "summary.json").read_text())["parameters"]["version"] for o in outs
    ] == list(range(1, 9))


def test_the_trainer_imports_neither_matplotlib_nor_scipy_stats():
    heavy = {"matplotlib", "scipy.stats", "sklearn"}
    assert imported_by("import trainer.main", heavy) == []
