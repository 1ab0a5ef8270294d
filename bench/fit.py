"""Fit time and quality against scikit-learn's GaussianMixture, like for like, in one process.

Two cases: (a) D=1, K=2, our tied-diag against scikit-learn's "tied" (the same family in 1-D);
(b) D=8, K=4, full covariances against "full", the components with unequal, correlated
covariances. At each size (100k and 1M points; --quick: 10k and 100k):

- cold: both optimise 10 starts (ours: n_init=10, n_best=10, all optimised together; scikit-learn:
  n_init=10 EM runs from k-means). Ours is timed twice: the first call at the size (compilation
  included) and a second call on a fresh window (compiled). scikit-learn compiles nothing.
- warm: the trainer's refit (its default config, warm-started from its current model) against
  scikit-learn's `warm_start=True` refit (EM from its previous solution), both on the same fresh
  windows of the same mixture, after both fitted the previous window. The first refit at a size
  compiles; the steady-state rounds after it are timed.

Quality is the mean log-likelihood per point on the window fitted, both models scored by the same
float64 evaluator (`mixture.evaluate.log_likelihood`). Then `gmm-trainer fit` on Old Faithful's
272 waiting times as new processes: cold and warm persistent compilation cache, and no cache.
Writes bench/results/fit.{md,json,png}.

    python -m bench.fit [--quick] [--sizes N ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from sklearn.mixture import GaussianMixture

from bench._common import RESULTS, machine, markdown_table, write_results
from kafka_common.jax_cache import enable_compilation_cache
from mixture.evaluate import log_likelihood
from mixture.fit import FitConfig, fit_compilations, fit_map
from mixture.params import MixtureParams, ModelParams

RESTARTS = 10
#: Timed steady-state warm refits per size (after the first refit, which compiles).
WARM_ROUNDS = 2
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
FAITHFUL = pathlib.Path(__file__).resolve().parent / "data" / "faithful_waiting.csv"
#: Process runs of `gmm-trainer fit` with a warm compilation cache.
WARM_CACHE_RUNS = 3
#: scikit-learn's EM runs on Old Faithful: as many as the optimised starts of `gmm-trainer fit`
#: (100 random candidates scored, the best FitConfig().n_best=4 optimised).
FAITHFUL_SKLEARN_N_INIT = FitConfig().n_best


def _truth_8d() -> MixtureParams:
    """Four 8-D components with unequal, correlated covariances (fixed seed)."""
    rng = np.random.default_rng(8)
    k, d = 4, 8
    trils = []
    for s in (0.5, 1.0, 1.5, 2.0):
        a = rng.normal(size=(d, d)) * s / np.sqrt(d)
        trils.append(np.linalg.cholesky(a @ a.T + 0.1 * s**2 * np.eye(d)))
    return MixtureParams(
        np.array([0.4, 0.3, 0.2, 0.1]), 3 * rng.normal(size=(k, d)), np.array(trils)
    )


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    truth: MixtureParams
    covariance: str  # ours
    sklearn_covariance: str
    #: The largest size with the cold comparison (None: every size). On 2 CPUs ours at 1M
    #: points, D=8 full, 10 starts together would take over an hour.
    cold_max_points: int | None = None

    @property
    def k(self) -> int:
        return self.truth.n_components


CASES = (
    Case(
        "D=1, K=2, tied-diag vs tied",
        MixtureParams([0.6, 0.4], [[0.0], [5.0]], [1.0]),
        "tied-diag",
        "tied",
    ),
    Case("D=8, K=4, full vs full", _truth_8d(), "full", "full", cold_max_points=100_000),
)


def sample(truth: MixtureParams, n: int, seed: Any) -> np.ndarray:
    rng = np.random.default_rng(seed)
    locs, scale = np.asarray(truth.locs), np.asarray(truth.scale)
    z = rng.choice(truth.n_components, size=n, p=np.asarray(truth.weights))
    eps = rng.normal(size=(n, locs.shape[1]))
    if scale.ndim == 3:
        return locs[z] + np.einsum("nij,nj->ni", scale[z], eps)
    return locs[z] + np.broadcast_to(scale, locs.shape)[z] * eps


def sklearn_params(gm: GaussianMixture) -> MixtureParams:
    """scikit-learn's fit in serving form: Cholesky factors, or a (D,) scale for 1-D tied."""
    cov = np.asarray(gm.covariances_)
    k, d = gm.means_.shape
    if gm.covariance_type == "tied":
        if d == 1:
            return MixtureParams(gm.weights_, gm.means_, np.sqrt(np.diag(cov)))
        cov = np.broadcast_to(cov, (k, d, d))
    elif gm.covariance_type != "full":
        raise ValueError(f"covariance_type {gm.covariance_type!r} is not benchmarked")
    return MixtureParams(gm.weights_, gm.means_, np.linalg.cholesky(cov))


def mean_loglik(x: np.ndarray, params: MixtureParams) -> float:
    return float(log_likelihood(x, params).mean())


def ours(
    x: np.ndarray, seed: int, config: FitConfig, warm: MixtureParams | None = None
) -> tuple[dict[str, Any], MixtureParams]:
    before = fit_compilations()
    t0 = time.perf_counter()
    r = fit_map(x, jax.random.PRNGKey(seed), config, warm_start=warm)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "steps": r.n_steps,
        "seconds_per_step": seconds / r.n_steps,
        "candidates_optimised": len(r.candidate_losses),
        "converged": r.converged,
        "compilations": fit_compilations() - before,
        "loglik_per_point": mean_loglik(x, r.params),
    }, r.params


def sklearn(gm: GaussianMixture, x: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    gm.fit(x)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "iterations": int(gm.n_iter_),  # the best init's
        "converged": bool(gm.converged_),
        "loglik_per_point": mean_loglik(x, sklearn_params(gm)),
    }


def _pair(o: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    return {
        "ours": o,
        "sklearn": s,
        "sklearn_over_ours_seconds": s["seconds"] / o["seconds"],
        "loglik_difference": o["loglik_per_point"] - s["loglik_per_point"],
    }


def bench_size(
    case: Case, n: int, prev: MixtureParams | None
) -> tuple[dict[str, Any], MixtureParams]:
    """One case at one size; returns its row and our last fit (the next size's warm start when
    that size has no cold fit)."""
    windows: Iterator[np.ndarray] = (sample(case.truth, n, (n, case.k, i)) for i in range(99))
    row: dict[str, Any] = {"case": case.name, "n_points": n, "cold": None}
    cold_cfg = FitConfig(case.k, case.covariance, n_init=RESTARTS, n_best=RESTARTS)
    x = next(windows)
    if prev is None or case.cold_max_points is None or n <= case.cold_max_points:
        first, _ = ours(x, 0, cold_cfg)
        x = next(windows)
        compiled, prev = ours(x, 1, cold_cfg)
        gm = GaussianMixture(
            case.k, covariance_type=case.sklearn_covariance, n_init=RESTARTS, random_state=0
        )
        row["cold"] = {"restarts": RESTARTS, "ours_first_call": first}
        row["cold"].update(_pair(compiled, sklearn(gm, x)))
        _log(case, n, "cold", row["cold"])
    # The previous window: scikit-learn's warm-start chain begins with one cold EM run on it
    # (n_init is ignored with warm_start=True); ours has its cold fit (or the last size's).
    warm_cfg = FitConfig(case.k, case.covariance)  # the trainer's: GMM_TRAIN_RESTARTS=100
    sk = GaussianMixture(
        case.k, covariance_type=case.sklearn_covariance, warm_start=True, random_state=0
    )
    sk_prev = sklearn(sk, x)
    x = next(windows)
    first, prev = ours(x, 2, warm_cfg, warm=prev)
    row["warm"] = {
        "n_init": warm_cfg.n_init,
        "n_best": warm_cfg.n_best,
        "sklearn_previous_window": sk_prev,
        "first_refit": _pair(first, sklearn(sk, x)),
        "rounds": [],
    }
    for i in range(WARM_ROUNDS):
        x = next(windows)
        o, prev = ours(x, 3 + i, warm_cfg, warm=prev)
        row["warm"]["rounds"].append(_pair(o, sklearn(sk, x)))
        _log(case, n, f"warm round {i + 1}", row["warm"]["rounds"][-1])
    return row, prev


def _log(case: Case, n: int, what: str, pair: dict[str, Any]) -> None:
    o, s = pair["ours"], pair["sklearn"]
    print(
        f"{case.name}, n={n:,} {what}: ours {o['seconds']:.3g}s ({o['steps']} steps) "
        f"sklearn {s['seconds']:.3g}s ({s['iterations']} iters); "
        f"loglik diff {pair['loglik_difference']:+.2e}",
        file=sys.stderr,
        flush=True,
    )


# --- Old Faithful, as new processes ----------------------------------------------------------

SKLEARN_PROCESS = """
import sys, numpy as np
from sklearn.mixture import GaussianMixture
x = np.loadtxt(sys.argv[1], skiprows=1)[:, None]
GaussianMixture(2, covariance_type="tied", n_init=int(sys.argv[2]), random_state=0).fit(x)
"""


def _timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout


def old_faithful() -> dict[str, Any]:
    x = np.loadtxt(FAITHFUL, skiprows=1)[:, None]
    trainer = str(pathlib.Path(sys.executable).with_name("gmm-trainer"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        out = os.path.join(tmp, "params.json")
        cmd = [trainer, "fit", "--data", str(FAITHFUL), "--out", out]
        cache = os.path.join(tmp, "jax-cache")
        plan = [("cold cache", cache)] + [("warm cache", cache)] * WARM_CACHE_RUNS
        for label, setting in [*plan, ("no cache (off)", "off")]:
            wall, stdout = _timed_run(cmd, {**os.environ, "GMM_JAX_CACHE_DIR": setting})
            fit_s = re.search(r" in ([0-9.]+)s;", stdout)
            model = ModelParams.loads(pathlib.Path(out).read_text())
            runs.append(
                {
                    "run": label,
                    "wall_seconds": wall,
                    "fit_seconds": float(fit_s.group(1)) if fit_s else None,
                    "loglik_per_point": mean_loglik(x, model.mixture),
                }
            )
            print(f"Old Faithful, gmm-trainer fit, {label}: {wall:.2f}s", file=sys.stderr)
    n_init = FAITHFUL_SKLEARN_N_INIT
    gm = GaussianMixture(2, covariance_type="tied", n_init=n_init, random_state=0)
    sk = sklearn(gm, x)
    process, _ = _timed_run(
        [sys.executable, "-c", SKLEARN_PROCESS, str(FAITHFUL), str(n_init)], dict(os.environ)
    )
    return {
        "n_points": len(x),
        "command": "gmm-trainer fit --data bench/data/faithful_waiting.csv",
        "runs": runs,
        "sklearn_n_init": n_init,
        "sklearn_in_process": sk,
        "sklearn_new_process_wall_seconds": process,
    }


# --- report ----------------------------------------------------------------------------------


def _cold_section(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        c = r["cold"]
        if c is None:
            table.append([r["case"], f"{r['n_points']:,}", *["not run"] * 9])
            continue
        o, s, f = c["ours"], c["sklearn"], c["ours_first_call"]
        table.append(
            [
                r["case"],
                f"{r['n_points']:,}",
                f["seconds"],
                o["seconds"],
                f"{o['steps']}{'' if o['converged'] else ' (cap)'}",
                s["seconds"],
                f"{s['iterations']}{'' if s['converged'] else ' (cap)'}",
                c["sklearn_over_ours_seconds"],
                f"{o['loglik_per_point']:.6f}",
                f"{s['loglik_per_point']:.6f}",
                f"{c['loglik_difference']:+.1e}",
            ]
        )
    skipped = [f"{r['case']} at {r['n_points']:,} points" for r in rows if r["cold"] is None]
    header = ["case", "points", "ours 1st call, compile incl. (s)", "ours compiled (s)"]
    header += ["ours steps", "sklearn (s)", "EM iters (best init)", "sklearn / ours compiled"]
    header += ["loglik/pt ours", "loglik/pt sklearn", "ours - sklearn"]
    return (
        f"## Cold: {RESTARTS} optimised starts each\n\n"
        f"Like for like: both optimise {RESTARTS} starts and keep the best (ours: "
        f"`FitConfig(n_init={RESTARTS}, n_best={RESTARTS})`, the {RESTARTS} random candidates "
        f"optimised together in one vmapped program; scikit-learn: `n_init={RESTARTS}`, "
        f"{RESTARTS} EM runs from k-means inits, one after another). Not like for like: the "
        'inits (random data points vs k-means) and the stopping rules differ. "1st call" is '
        "ours at a new window size: XLA compilation included (scikit-learn compiles nothing). "
        '"Compiled" is a second call on a fresh window of the same size; it is the figure '
        "compared with scikit-learn, on that window."
        + (f" Not run: {', '.join(skipped)} (over an hour on 2 CPUs)." if skipped else "")
        + "\n\n"
        + markdown_table(header, table)
    )


def _warm_section(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        w = r["warm"]
        rounds = w["rounds"]
        table.append(
            [
                r["case"],
                f"{r['n_points']:,}",
                w["first_refit"]["ours"]["seconds"],
                " / ".join(f"{p['ours']['seconds']:.3g}" for p in rounds),
                " / ".join(str(p["ours"]["steps"]) for p in rounds),
                statistics.median(p["ours"]["seconds_per_step"] for p in rounds),
                " / ".join(f"{p['sklearn']['seconds']:.3g}" for p in rounds),
                " / ".join(str(p["sklearn"]["iterations"]) for p in rounds),
                _worst_ratio(rounds),
                " / ".join(f"{p['loglik_difference']:+.1e}" for p in rounds),
            ]
        )
    refits = [p for r in rows for p in (r["warm"]["first_refit"], *r["warm"]["rounds"])]
    won = sum(p["ours"]["candidates_optimised"] == 1 for p in refits)
    header = ["case", "points", "ours 1st refit, compile incl. (s)", "ours refit (s), each round"]
    header += ["ours steps", "ours s/step", "sklearn refit (s), each round", "EM iters"]
    header += ["sklearn / ours, worst rounds", "loglik/pt ours - sklearn"]
    return (
        "## Warm: the trainer's refit vs scikit-learn's `warm_start=True`\n\n"
        "Like for like: both systems first fit a previous window, then refit fresh windows of "
        "the same size drawn from the same mixture, each warm-started from its own previous "
        "solution. Ours runs the trainer's default config (`n_init="
        f"{rows[0]['warm']['n_init']}` random candidates scored in one pass with the warm "
        "start; when the warm start scores best it alone is optimised, as in "
        f"{won} of {len(refits)} refits here); scikit-learn's `warm_start=True` runs EM from its "
        "previous solution (no restarts). The first refit at a size compiles ours (shown "
        f"separately); the {WARM_ROUNDS} rounds after it are the steady state `gmm-trainer run` "
        "sees, every round shown; the ratio is worst round over worst round. Where a size has "
        "no cold fit, our warm chain starts from the previous size's fit.\n\n"
        + markdown_table(header, table)
    )


def _worst_ratio(rounds: list[dict[str, Any]]) -> float:
    """scikit-learn's slowest round over ours."""
    return max(p["sklearn"]["seconds"] for p in rounds) / max(p["ours"]["seconds"] for p in rounds)


def _faithful_section(of: dict[str, Any]) -> str:
    table: list[list[Any]] = [
        [r["run"], r["wall_seconds"], r["fit_seconds"], f"{r['loglik_per_point']:.5f}"]
        for r in of["runs"]
    ]
    sk, n_init = of["sklearn_in_process"], of["sklearn_n_init"]
    table.append(
        [
            f"scikit-learn in this process (n_init={n_init})",
            "-",
            sk["seconds"],
            f"{sk['loglik_per_point']:.5f}",
        ]
    )
    table.append(
        [
            f"scikit-learn as a new process (n_init={n_init})",
            of["sklearn_new_process_wall_seconds"],
            "-",
            "-",
        ]
    )
    return (
        "## Old Faithful: `gmm-trainer fit` as a new process\n\n"
        f"`{of['command']}` ({of['n_points']} waiting times; K=2, tied-diag, 100 candidates, "
        "4 optimised), each run a new process: first with an empty persistent compilation "
        "cache (`GMM_JAX_CACHE_DIR` at a fresh directory), then with that cache warm, then "
        "with `GMM_JAX_CACHE_DIR=off`. Wall: the whole process (start-up, imports, compilation "
        "or cache loads, fit, output); fit: the fit's own seconds as the CLI prints them. "
        f"scikit-learn for reference (tied, the same family in 1-D, {n_init} EM runs: as many as "
        "we optimise), in this process and as a new Python process that imports it, reads the "
        "CSV and fits.\n\n" + markdown_table(["run", "wall (s)", "fit (s)", "loglik/pt"], table)
    )


def markdown(payload: dict[str, Any]) -> str:
    m, rows = payload["machine"], payload["results"]
    return (
        "# Fit time and quality vs scikit-learn\n\n"
        f"{m['cpus']} CPUs, {m['machine']}, JAX {m['jax']} on {m['jax_backend']}, Python "
        f"{m['python']}; one process, one run of each (no best-of). Log-likelihoods are the mean "
        "log p(x) per point on the window fitted, both models scored by the same float64 "
        "evaluator; positive differences favour ours. Ours is a MAP fit (weak priors placed on "
        "the data) by Adam on the enumerated ELBO; scikit-learn's is maximum-likelihood EM "
        "(its defaults: tol 1e-3 on the mean log-likelihood, max_iter 100).\n\n"
        + _cold_section(rows)
        + "\n"
        + _warm_section(rows)
        + "\n"
        + _faithful_section(payload["old_faithful"])
        + "\n![fit time](fit.png)\n"
    )


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4), dpi=100)
    for ax, case in zip(np.atleast_1d(axes), cases, strict=True):
        mine = [r for r in rows if r["case"] == case]
        n = [r["n_points"] for r in mine]
        cold = [r for r in mine if r["cold"] is not None]
        for label, xs, ys in (
            (
                "ours cold, compiled",
                [r["n_points"] for r in cold],
                [r["cold"]["ours"]["seconds"] for r in cold],
            ),
            (
                "sklearn cold",
                [r["n_points"] for r in cold],
                [r["cold"]["sklearn"]["seconds"] for r in cold],
            ),
            (
                "ours warm refit (worst)",
                n,
                [max(p["ours"]["seconds"] for p in r["warm"]["rounds"]) for r in mine],
            ),
            (
                "sklearn warm refit (worst)",
                n,
                [max(p["sklearn"]["seconds"] for p in r["warm"]["rounds"]) for r in mine],
            ),
        ):
            ax.plot(xs, ys, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="points", ylabel="seconds", title=case)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "fit.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k points only")
    parser.add_argument("--sizes", type=int, nargs="+", help="these sizes instead")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    # "Compile included" must mean it: no persistent cache in this process.
    enable_compilation_cache("off")
    rows = []
    for case in CASES:
        prev = None
        for n in sorted(sizes):
            row, prev = bench_size(case, n, prev)
            rows.append(row)
    payload = {"machine": machine(), "results": rows, "old_faithful": old_faithful()}
    md = markdown(payload)
    path = write_results("fit", payload, md)
    plot(rows)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
