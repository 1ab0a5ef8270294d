"""Fit time and quality against scikit-learn's GaussianMixture, in one process and run.

For 10k, 100k and 1M points of a 1-D two-component mixture (shared scale): our MAP fit cold
(first fit at that size, compile included), warm (the trainer's refit: already compiled, warm
start from the current model plus the same random restarts), and scikit-learn's EM with the
same number of restarts (covariance_type="tied", the same model family). Quality is the mean
log-likelihood per point under each fitted model, scored by the same scikit-learn evaluator.
Writes bench/results/fit.{md,json,png}.

    python -m bench.fit [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from sklearn.mixture import GaussianMixture

from bench._common import RESULTS, machine, markdown_table, write_results
from mixture.fit import FitConfig, fit_map
from mixture.params import MixtureParams

RESTARTS = 10
TRUE = MixtureParams(np.array([0.6, 0.4]), np.array([[0.0], [5.0]]), np.array([1.0]))


def sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=TRUE.weights)
    return TRUE.locs[z, 0] + TRUE.scale[0] * rng.normal(size=n)


def as_sklearn(p: MixtureParams) -> GaussianMixture:
    gm = GaussianMixture(p.n_components, covariance_type="tied")
    gm.weights_ = np.asarray(p.weights)
    gm.means_ = np.asarray(p.locs)
    gm.covariances_ = np.diag(np.asarray(p.scale) ** 2)
    gm.precisions_cholesky_ = np.diag(1 / np.asarray(p.scale))
    return gm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    config = FitConfig(n_init=RESTARTS)

    rows, results = [], []
    for n in sizes:
        x = sample(n, seed=n)
        cold = fit_map(x, jax.random.PRNGKey(0), config)
        # The trainer's refits: new windows of the same size, warm-started from the last model.
        # The first refit compiles the warm-start program; the second is the steady state.
        first = fit_map(
            sample(n, seed=n + 1), jax.random.PRNGKey(1), config, warm_start=cold.params
        )
        x2 = sample(n, seed=n + 2)
        warm = fit_map(x2, jax.random.PRNGKey(2), config, warm_start=first.params)
        t0 = time.perf_counter()
        sk = GaussianMixture(2, covariance_type="tied", n_init=RESTARTS, random_state=0).fit(
            x2[:, None]
        )
        sk_seconds = time.perf_counter() - t0
        ll_ours = float(as_sklearn(warm.params).score(x2[:, None]))
        ll_sk = float(sk.score(x2[:, None]))
        entry = {
            "n_points": n,
            "restarts": RESTARTS,
            "ours_cold_seconds": cold.seconds,
            "ours_first_refit_seconds": first.seconds,
            "ours_warm_seconds": warm.seconds,
            "ours_warm_steps": warm.n_steps,
            "ours_converged": warm.converged,
            "sklearn_seconds": sk_seconds,
            "sklearn_iterations": int(sk.n_iter_),
            "warm_speedup_vs_sklearn": sk_seconds / warm.seconds,
            "loglik_per_point_ours": ll_ours,
            "loglik_per_point_sklearn": ll_sk,
            "loglik_difference": ll_ours - ll_sk,
        }
        results.append(entry)
        rows.append(
            [
                f"{n:,}",
                cold.seconds,
                first.seconds,
                warm.seconds,
                warm.n_steps,
                sk_seconds,
                entry["warm_speedup_vs_sklearn"],
                f"{ll_ours:.5f}",
                f"{ll_sk:.5f}",
            ]
        )
        print(
            f"n={n:,}: cold {cold.seconds:.2f}s warm {warm.seconds:.2f}s "
            f"sklearn {sk_seconds:.2f}s; loglik {ll_ours:.5f} vs {ll_sk:.5f}",
            file=sys.stderr,
        )

    payload = {"machine": machine(), "results": results}
    md = (
        "# Fit time and quality vs scikit-learn\n\n"
        f"1-D, K=2, shared scale; {RESTARTS} restarts for both. Backend: "
        f"{payload['machine']['jax_backend']} ({payload['machine']['cpus']} CPUs). "
        "Cold = first fit at that size (XLA compile included); 1st refit = the first warm-started "
        "refit (compiles the warm-start program once); warm refit = the trainer's steady state: "
        "a new window of the same size, compiled, warm-started, plus the restarts.\n\n"
        + markdown_table(
            [
                "points",
                "ours cold (s)",
                "ours 1st refit (s)",
                "ours warm refit (s)",
                "warm SVI steps",
                "sklearn (s)",
                "sklearn / ours warm",
                "loglik/pt ours",
                "loglik/pt sklearn",
            ],
            rows,
        )
        + "\n![fit time](fit.png)\n"
    )
    path = write_results("fit", payload, md)
    plot(results)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n_points"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(n, [r["ours_cold_seconds"] for r in results], marker="o", label="ours, cold (compile)")
    ax.plot(n, [r["ours_warm_seconds"] for r in results], marker="o", label="ours, warm refit")
    ax.plot(n, [r["sklearn_seconds"] for r in results], marker="o", label="scikit-learn EM")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("points")
    ax.set_ylabel("seconds")
    ax.set_title(f"MAP fit time ({results[0]['restarts']} restarts)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "fit.png")


if __name__ == "__main__":
    sys.exit(main())
