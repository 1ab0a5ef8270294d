"""Glitches against the fit: how far a share of bad points moves it, ours beside scikit-learn's.

For each data set and covariance type, both fitters first fit the clean data (their reference),
then the same data with a share of its points replaced by glitches (0, 0.1 %, 1 %, 5 %; at least
one glitch for a share above 0), several seeds each. Two kinds of glitch, each in one random
coordinate of the point it replaces:

- far: +-10^u with u uniform in [3, 15] (anything the point rules allow, up to 1e15);
- near: the coordinate's largest clean value plus 8 to 30 of its standard deviations (inside
  the fence: the trim's job, mixture.robust).

Reported per fitter, against its own clean fit: the location error (the largest, over
components and coordinates, of |loc - clean loc| / the clean component's sd, after matching
components), and the agreement (the share of the clean points that keep their clean-fit MAP
component), median and worst over seeds; ours also the points left out. Ours is `gmm-trainer
fit` (mixture.robust.fit_robust at the CLI's defaults); scikit-learn's is `GaussianMixture`
(n_init=10, the same K and covariance type; tied-diag has no scikit-learn twin, so it is
compared with "diag"). A scikit-learn fit that raises counts as failed (error infinite,
agreement 0). Writes bench/results/contamination.{md,json}.

    python -m bench.contamination [--quick]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np

from bench._common import machine, markdown_table, sample, write_results
from mixture.evaluate import component_log_pdf
from mixture.fit import FitConfig
from mixture.labels import align_components, component_sds
from mixture.params import MixtureParams
from mixture.robust import fit_robust

FAITHFUL = pathlib.Path(__file__).resolve().parent / "data" / "faithful.csv"
SHARES = (0.0, 0.001, 0.01, 0.05)
KINDS = ("far", "near")
SKLEARN_COVARIANCE = {"tied-diag": "diag"}


def synthetic_d8(n: int = 10_000) -> np.ndarray:
    """Three well-separated 8-D components with correlated full covariances."""
    rng = np.random.default_rng(8)
    locs = rng.normal(0.0, 6.0, (3, 8))
    chol = np.stack([np.tril(rng.normal(0, 0.3, (8, 8)), -1) + np.eye(8) for _ in range(3)])
    return sample(MixtureParams(np.array([0.5, 0.3, 0.2]), locs, chol), n, 9)


def datasets(quick: bool) -> list[dict[str, Any]]:
    faithful = np.loadtxt(FAITHFUL, delimiter=",", skiprows=1)
    cases = [
        {"name": "Old Faithful (2-D, 272)", "x": faithful, "k": 2, "covariance": c}
        for c in (("diag",) if quick else ("tied-diag", "diag", "spherical", "tied", "full"))
    ]
    if not quick:
        cases.append({"name": "synthetic (8-D, 10,000)", "x": synthetic_d8(), "k": 3,
                      "covariance": "full"})  # fmt: skip
    return cases


def glitched(
    x: np.ndarray, share: float, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """x with a share of its rows replaced by glitches, and the mask of the rows left clean."""
    n, d = x.shape
    count = 0 if share == 0 else max(1, round(share * n))
    rows = rng.choice(n, count, replace=False)
    dims = rng.integers(0, d, count)
    y = x.copy()
    if kind == "far":
        y[rows, dims] = rng.choice([-1.0, 1.0], count) * 10.0 ** rng.uniform(3, 15, count)
    else:
        y[rows, dims] = x.max(axis=0)[dims] + rng.uniform(8, 30, count) * x.std(axis=0)[dims]
    clean = np.ones(n, bool)
    clean[rows] = False
    return y, clean


def _assign(params: MixtureParams, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.log(params.weights) + component_log_pdf(x, params), axis=1)


def _compare(
    fit: MixtureParams | None, ref: MixtureParams, x: np.ndarray, clean: np.ndarray
) -> tuple[float, float]:
    if fit is None or not all(np.all(np.isfinite(np.asarray(a))) for a in fit):
        return float("inf"), 0.0
    fit = align_components(fit, ref)
    error = float(np.max(np.abs(np.asarray(fit.locs) - ref.locs) / component_sds(ref)))
    agreement = float(np.mean(_assign(fit, x[clean]) == _assign(ref, x[clean])))
    return error, agreement


def ours(x: np.ndarray, k: int, covariance: str) -> tuple[MixtureParams, dict[str, int]]:
    fitted = fit_robust(x, jax.random.PRNGKey(0), FitConfig(n_components=k, covariance=covariance))
    return fitted.result.params, fitted.excluded


def sklearn(x: np.ndarray, k: int, covariance: str) -> MixtureParams | None:
    from sklearn.mixture import GaussianMixture

    kind = SKLEARN_COVARIANCE.get(covariance, covariance)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(k, covariance_type=kind, n_init=10, random_state=0).fit(x)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    d = x.shape[1]
    cov = {
        "full": lambda c: c,
        "tied": lambda c: np.broadcast_to(c, (k, d, d)),
        "diag": lambda c: np.stack([np.diag(v) for v in c]),
        "spherical": lambda c: np.stack([np.eye(d) * v for v in c]),
    }[kind](gm.covariances_)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    return MixtureParams(gm.weights_, gm.means_, chol)


def run(quick: bool, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for case in datasets(quick):
        x, k, cov = case["x"], case["k"], case["covariance"]
        ref_ours, clean_excluded = ours(x, k, cov)
        ref_sk = sklearn(x, k, cov)
        assert ref_sk is not None, "scikit-learn failed on clean data"
        for share in SHARES:
            for kind in KINDS if share else ("none",):
                runs: dict[str, list[tuple[float, float]]] = {"ours": [], "sklearn": []}
                left_out: list[int] = []
                glitches = 0
                for seed in range(seeds if share else 1):
                    rng = np.random.default_rng([seed, int(share * 1e4), KINDS.index(kind) + 1
                                                 if share else 0])  # fmt: skip
                    y, clean = glitched(x, share, kind if share else "far", rng)
                    glitches = int((~clean).sum())
                    params, excluded = ours(y, k, cov)
                    runs["ours"].append(_compare(params, ref_ours, x, clean))
                    left_out.append(sum(excluded.values()))
                    runs["sklearn"].append(_compare(sklearn(y, k, cov), ref_sk, x, clean))
                row = {
                    "data": case["name"],
                    "covariance": cov,
                    "k": k,
                    "share": share,
                    "kind": kind,
                    "glitches": glitches,
                    "seeds": len(runs["ours"]),
                    "clean_left_out": sum(clean_excluded.values()),
                    "left_out_median": float(np.median(left_out)),
                }
                for who, found in runs.items():
                    errors = np.array([e for e, _ in found])
                    agreements = np.array([a for _, a in found])
                    row[who] = {
                        "error_sd_median": float(np.median(errors)),
                        "error_sd_worst": float(np.max(errors)),
                        "agreement_median": float(np.median(agreements)),
                        "agreement_worst": float(np.min(agreements)),
                        "within_goal": int(np.sum((errors < 0.1) & (agreements >= 0.99))),
                    }
                rows.append(row)
                print(
                    f"{case['name']} {cov} {share:.1%} {kind}: ours worst "
                    f"{row['ours']['error_sd_worst']:.3g} sd / {row['ours']['agreement_worst']:.3f}"
                    f", sklearn worst {row['sklearn']['error_sd_worst']:.3g} sd / "
                    f"{row['sklearn']['agreement_worst']:.3f}",
                    file=sys.stderr,
                )
    return rows


def _sd(v: float) -> str:
    return "failed" if not np.isfinite(v) else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--seeds", type=int, default=5, help="glitch draws per share and kind")
    args = parser.parse_args(argv)
    seeds = 2 if args.quick else args.seeds
    t0 = time.perf_counter()
    rows = run(args.quick, seeds)
    seconds = time.perf_counter() - t0
    import sklearn as sk

    payload = {
        "machine": {**machine(), "sklearn": sk.__version__},
        "seconds": seconds,
        "goal": "location error < 0.1 sd and agreement >= 0.99 at shares up to 1 %",
        "rows": rows,
    }
    table = [
        [
            r["data"],
            r["covariance"],
            f"{r['share']:.1%}",
            r["kind"],
            r["glitches"],
            r["left_out_median"],
            f"{_sd(r['ours']['error_sd_median'])} / {_sd(r['ours']['error_sd_worst'])}",
            f"{r['ours']['agreement_median']:.3f} / {r['ours']['agreement_worst']:.3f}",
            f"{_sd(r['sklearn']['error_sd_median'])} / {_sd(r['sklearn']['error_sd_worst'])}",
            f"{r['sklearn']['agreement_median']:.3f} / {r['sklearn']['agreement_worst']:.3f}",
        ]
        for r in rows
    ]
    md = (
        "# Glitches against the fit\n\n"
        f"{__doc__.split(chr(10) + chr(10), 1)[1].rsplit(chr(10) + chr(10), 1)[0]}\n\n"
        f"{seeds} seeds per share and kind; median / worst over them. {seconds:,.0f} s on "
        f"{payload['machine']['cpus']} CPUs.\n\n"
        + markdown_table(
            [
                "data",
                "covariance",
                "glitches",
                "kind",
                "points",
                "left out (ours, median)",
                "ours: location error (sd)",
                "ours: agreement",
                "scikit-learn: location error (sd)",
                "scikit-learn: agreement",
            ],
            table,
        )
    )
    if args.quick:
        print(md)
        return 0
    path = write_results("contamination", payload, md)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
