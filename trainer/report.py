"""The fit report of a published version: the tutorial's pictures and a JSON summary.

loss.png (the loss per SVI step), grad_norms.png (each global's gradient norm per step) and
density.png (the mixture's density over a histogram of the window; the first dimension's
marginal when D > 1), plus summary.json (parameters, loss, AIC/BIC, window size, duration);
with the NUTS posterior also posterior.json (summary, divergences) and trace.png.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import threading
from typing import Any

import numpy as np

from mixture.evaluate import Score
from mixture.fit import FitResult
from mixture.labels import component_sds
from mixture.params import ModelParams
from mixture.posterior import Posterior

#: Matplotlib is not thread-safe (its mathtext parser, which log-scale tick labels use, failed
#: when two reports were drawn at once: tests/unit/trainer/test_report.py); the trainer draws
#: on worker threads (a fit's report, a posterior's), one figure at a time.
_DRAWING = threading.Lock()


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A new figure and its axes, through matplotlib's object API rather than pyplot (no
    global figure registry to leak into), imported on the first report: with pyplot it cost a
    trainer's start-up about half a second before it had anything to plot. Draw under
    _DRAWING."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _normal_pdf(x: np.ndarray, loc: float, scale: float) -> np.ndarray:
    # scipy.stats.norm.pdf, without importing scipy.stats (most of a second).
    z = (x - loc) / scale
    return np.exp(-0.5 * z * z) / (scale * math.sqrt(2 * math.pi))


def write_report(
    directory: pathlib.Path,
    model: ModelParams,
    result: FitResult,
    points: np.ndarray,
    fit_score: Score,
    excluded: dict[str, int] | None = None,
    peak_rss_bytes: int | None = None,
    peak_rss_exact: bool | None = None,
) -> pathlib.Path:
    """The report of a published fit of `points` (the points it kept); `excluded`: the window's
    points it left out, per reason (mixture.robust); `peak_rss_bytes`: the most resident memory
    the trainer held during the fit, `peak_rss_exact` whether that is the fit's alone
    (`trainer.peak_memory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    with _DRAWING:
        _draw_fit(directory, model, result, points)

    summary = {
        "parameters": model.to_json(),
        "init_loss": result.init_loss,
        "final_loss": result.final_loss,
        "steps": result.n_steps,
        "converged": result.converged,
        "log_likelihood": fit_score.log_likelihood,
        "mean_log_likelihood": fit_score.mean_log_likelihood,
        "aic": fit_score.aic,
        "bic": fit_score.bic,
        "window": len(points) + sum((excluded or {}).values()),
        "fitted_points": len(points),
        "excluded_points": excluded or {},
        "fit_seconds": result.seconds,
        "fit_points_per_second": (len(points) + sum((excluded or {}).values()))
        / max(result.seconds, 1e-9),
        "fit_peak_rss_bytes": peak_rss_bytes,
        "fit_peak_rss_exact": peak_rss_exact,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return directory


def write_posterior_report(directory: pathlib.Path, posterior: Posterior) -> pathlib.Path:
    """posterior.json (the NUTS summary and divergences) and trace.png (locs per NUTS step)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "posterior.json").write_text(
        json.dumps(
            {
                "method": "collapsed NUTS (assignments enumerated)",
                "n_points": posterior.n_points,
                "num_samples": len(posterior.samples["weights"]),
                "divergences": posterior.divergences,
                "summary": posterior.summary,
            },
            indent=2,
        )
        + "\n"
    )
    with _DRAWING:
        _draw_trace(directory, posterior)
    return directory


def prune_reports(directory: pathlib.Path, keep: int) -> list[pathlib.Path]:
    """Deletes all but the newest `keep` version reports (v<N> folders) under `directory`;
    returns those deleted. Other files and folders are left alone."""
    versions = sorted(
        (int(p.name[1:]), p) for p in directory.glob("v*") if p.is_dir() and p.name[1:].isdigit()
    )
    old = [p for _, p in versions[: max(0, len(versions) - keep)]]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def _draw_fit(
    directory: pathlib.Path, model: ModelParams, result: FitResult, points: np.ndarray
) -> None:
    """loss.png, grad_norms.png and density.png."""
    fig, ax = _figure(10, 3)
    ax.plot(result.losses)
    ax.set(
        xlabel="step", ylabel="loss", yscale="log", title=f"Convergence of SVI (v{model.version})"
    )
    fig.tight_layout()
    fig.savefig(directory / "loss.png")

    fig, ax = _figure(10, 4)
    for name, norms in result.grad_norms.items():
        ax.plot(np.maximum(norms, 1e-12), label=name)
    ax.set(xlabel="step", ylabel="gradient norm", yscale="log", title="Gradient norms during SVI")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(directory / "grad_norms.png")

    m = model.mixture
    x = points[:, 0]
    x = x[~np.isnan(x)]  # missing coordinates
    scales = component_sds(m)[:, 0]  # the marginal along x[0], any covariance type
    grid = np.linspace(x.min() - 3 * scales.max(), x.max() + 3 * scales.max(), 400)
    fig, ax = _figure(10, 4)
    ax.hist(x, bins=80, density=True, color="0.85", label=f"window ({len(x):,} points)")
    total = np.zeros_like(grid)
    for k in range(m.n_components):
        density = m.weights[k] * _normal_pdf(grid, m.locs[k, 0], scales[k])
        total += density
        ax.plot(grid, density, label=f"component {k}")
    ax.plot(grid, total, "k--", label="mixture")
    ax.set(
        xlabel="x" if m.dim == 1 else "x[0]",
        ylabel="probability density",
        title=f"Mixture density, version {model.version}",
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "density.png")


def _draw_trace(directory: pathlib.Path, posterior: Posterior) -> None:
    """trace.png: the locations per NUTS step."""
    locs = posterior.samples["locs"][:, :, 0]
    fig, ax = _figure(8, 3)
    for k in range(locs.shape[1]):
        ax.plot(locs[:, k], label=f"component {k}")
    ax.set(
        xlabel="NUTS step",
        ylabel="loc" if posterior.samples["locs"].shape[2] == 1 else "loc[0]",
        title="Trace of the locations during NUTS",
    )
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "trace.png")
