"""Fit time and quality against scikit-learn's GaussianMixture, like for like, in one process.

Two cases: (a) D=1, K=2, our tied-diag against scikit-learn's "tied" (the same family in 1-D);
(b) D=8, K=4, full covariances against "full", the components with unequal, correlated
covariances. At each size (100k and 1M points; --quick: 10k and 100k):

- cold: both optimise 10 starts (ours: n_init=10, n_best=10, k-means++ seeded, all optimised
  together by EM-preconditioned steps; scikit-learn: n_init=10 EM runs from k-means). Ours is
  timed twice: the first call at the size (compilation included) and a second call on a fresh
  window (compiled). scikit-learn compiles nothing. gmmx (a minimal JAX EM) is the peer: its
  k-means start (scikit-learn's KMeans, 10 inits) and one EM run, compiled the same way.
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
import itertools
import json
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

from bench._common import RESULTS, machine, markdown_table, sample, write_results
from bench.summary import sklearn_worst
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
#: The trainer's fit settings (its FitConfig takes only K, the covariance and the restarts).
WARM = FitConfig()
#: Seconds every timed run waits first, so that it starts on an idle machine: scikit-learn's
#: multithreaded BLAS leaves its worker threads spinning for a while after a fit, and on 2 CPUs
#: they took one from whatever ran next (ours: a 1-D refit of 100k points 3.7 ms after a pause,
#: up to 8.6 right after scikit-learn's run at its defaults). The trainer's refits, minutes apart,
#: start from an idle process too.
QUIET_S = 0.3


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
    Case("D=8, K=4, full vs full", _truth_8d(), "full", "full"),
)
SCOPE = (
    "Cold and warm comparisons run at every size. Our ten cold candidates are optimised "
    "together until each one has settled or fallen hopelessly behind the best "
    "(FitConfig.em_prune_steps), so the slowest hopeful candidate holds all ten. The goals: "
    "cold fits at least 3x scikit-learn's speed with the same number of starts, warm refits at "
    "least 5x its `warm_start`, each at a mean log-likelihood within 1e-3 nats per point of "
    "scikit-learn's or better."
)


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
    key = jax.random.PRNGKey(seed)  # made before the clock, as the trainer makes its key
    time.sleep(QUIET_S)
    t0 = time.perf_counter()
    r = fit_map(x, key, config, warm_start=warm)
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
    time.sleep(QUIET_S)
    t0 = time.perf_counter()
    gm.fit(x)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "iterations": int(gm.n_iter_),  # the best init's
        "converged": bool(gm.converged_),
        "loglik_per_point": mean_loglik(x, sklearn_params(gm)),
    }


def gmmx_fit(x: np.ndarray, k: int) -> dict[str, Any]:
    """gmmx 0.7 as its README fits: a k-means start (scikit-learn's KMeans, its 10 inits), then
    one jitted EM run (tol 1e-3 per point, as scikit-learn's). Full covariances: gmmx has no
    tied type, so in 1-D it fits a variance per component where we and scikit-learn fit one."""
    import jax.numpy as jnp
    from gmmx import EMFitter, GaussianMixtureModelJax

    time.sleep(QUIET_S)
    t0 = time.perf_counter()
    xj = jnp.asarray(x, jnp.float32)
    start = GaussianMixtureModelJax.from_k_means(xj, k, random_state=0)
    result = EMFitter(tol=1e-3, reg_covar=1e-6).fit(xj, start)
    gm = result.gmm.to_sklearn()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "iterations": int(result.n_iter),
        "converged": bool(result.converged),
        "loglik_per_point": mean_loglik(x, sklearn_params(gm)),
    }


def sklearn_one_thread(gm: GaussianMixture, x: np.ndarray) -> dict[str, Any]:
    """`sklearn` with its BLAS and OpenMP thread pools limited to one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return sklearn(gm, x)


def _pair(o: dict[str, Any], s: dict[str, Any], s1: dict[str, Any] | None = None) -> dict[str, Any]:
    faster = s["seconds"] if s1 is None else min(s["seconds"], s1["seconds"])
    out = {
        "ours": o,
        "sklearn": s,
        # Against scikit-learn's faster setting (defaults, or one thread) when both ran.
        "sklearn_over_ours_seconds": faster / o["seconds"],
        "loglik_difference": o["loglik_per_point"] - s["loglik_per_point"],
    }
    if s1 is not None:
        out["sklearn_one_thread"] = s1
    return out


def windows(case: Case, n: int, stream: int) -> Iterator[np.ndarray]:
    """Fresh windows of n points from the case's mixture (stream 0: cold, 1: warm)."""
    for i in itertools.count():
        yield sample(case.truth, n, (n, case.k, stream, i))


def bench_cold(case: Case, n: int) -> tuple[dict[str, Any], MixtureParams]:
    """Cold against cold, 10 optimised starts each; returns the row and our compiled fit."""
    config = FitConfig(case.k, case.covariance, n_init=RESTARTS, n_best=RESTARTS)
    w = windows(case, n, 0)
    first, _ = ours(next(w), 0, config)
    x = next(w)
    compiled, params = ours(x, 1, config)
    gm = GaussianMixture(
        case.k, covariance_type=case.sklearn_covariance, n_init=RESTARTS, random_state=0
    )
    row = {"case": case.name, "n_points": n, "restarts": RESTARTS, "ours_first_call": first}
    gm1 = GaussianMixture(
        case.k, covariance_type=case.sklearn_covariance, n_init=RESTARTS, random_state=0
    )
    row.update(_pair(compiled, sklearn(gm, x), sklearn_one_thread(gm1, x)))
    gmmx_fit(next(w), case.k)  # compiles its EM for this size
    peer = gmmx_fit(x, case.k)
    row["gmmx"] = {
        **peer,
        "gmmx_over_ours_seconds": peer["seconds"] / compiled["seconds"],
        "loglik_difference": compiled["loglik_per_point"] - peer["loglik_per_point"],
    }
    _log(case, n, "cold", row)
    return row, params


def bench_warm(case: Case, n: int, prev: MixtureParams) -> tuple[dict[str, Any], MixtureParams]:
    """The trainer's refit against scikit-learn's warm_start=True on the same windows; prev is
    our current model (a fit of the same mixture). Returns the row and our last refit."""
    config = FitConfig(case.k, case.covariance)  # the trainer's: GMM_TRAIN_RESTARTS=100
    w = windows(case, n, 1)
    # scikit-learn's chain begins with a cold EM run on a previous window (n_init is ignored
    # with warm_start=True).
    # Two chains on the same windows: scikit-learn at its defaults, and with its BLAS and
    # OpenMP pools at one thread (on 2 CPUs their threads can contend: it was the faster
    # setting here at 100k points). The ratio is against the faster of the two.
    sk, sk1 = (
        GaussianMixture(
            case.k, covariance_type=case.sklearn_covariance, warm_start=True, random_state=0
        )
        for _ in range(2)
    )
    x = next(w)
    sk_prev = sklearn(sk, x)
    sklearn_one_thread(sk1, x)
    x = next(w)
    first, prev = ours(x, 2, config, warm=prev)
    row: dict[str, Any] = {
        "case": case.name,
        "n_points": n,
        "n_init": config.n_init,
        "n_best": config.n_best,
        "sklearn_previous_window": sk_prev,
        "first_refit": _pair(first, sklearn(sk, x), sklearn_one_thread(sk1, x)),
        "rounds": [],
    }
    for i in range(WARM_ROUNDS):
        x = next(w)
        o, prev = ours(x, 3 + i, config, warm=prev)
        row["rounds"].append(_pair(o, sklearn(sk, x), sklearn_one_thread(sk1, x)))
        _log(case, n, f"warm round {i + 1}", row["rounds"][-1])
    # Diagnostic, not the trainer's config: the same refit with the warm start as the only
    # candidate (n_init=1), compiled on earlier windows and timed on the next, shows what
    # scoring the random candidates costs.
    alone = dataclasses.replace(config, n_init=1)
    # Warmed up on three windows: a refit that needs one more step than the others runs a
    # program of its own (a chunk of one step), compiled when first needed. A timed call that
    # still compiled is marked in the table.
    for _ in range(3):
        ours(next(w), 5, alone, warm=prev)
    row["warm_start_alone"], _ = ours(next(w), 6, alone, warm=prev)
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
            fit_s = re.search(r" in ([0-9.]+)s\b", stdout)
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
    table = [
        [
            r["case"],
            f"{r['n_points']:,}",
            r["ours_first_call"]["seconds"],
            r["ours"]["seconds"],
            f"{_steps(r['ours_first_call'])} / {_steps(r['ours'])}",
            r["sklearn"]["seconds"],
            r["sklearn_one_thread"]["seconds"] if "sklearn_one_thread" in r else "-",
            f"{r['sklearn']['iterations']}{'' if r['sklearn']['converged'] else ' (cap)'}",
            r["sklearn_over_ours_seconds"],
            f"{r['ours']['loglik_per_point']:.6f}",
            f"{r['sklearn']['loglik_per_point']:.6f}",
            f"{r['loglik_difference']:+.1e}",
            r["gmmx"]["seconds"],
            r["gmmx"]["gmmx_over_ours_seconds"],
            f"{r['gmmx']['loglik_difference']:+.1e}",
        ]
        for r in rows
    ]
    header = ["case", "points", "ours 1st call, compile incl. (s)", "ours compiled (s)"]
    header += ["ours steps (1st / compiled)", "sklearn (s)", "sklearn at 1 thread (s)"]
    header += ["EM iters (best init)", "sklearn (faster setting) / ours compiled"]
    header += ["loglik/pt ours", "loglik/pt sklearn", "ours - sklearn"]
    header += ["gmmx (s)", "gmmx / ours", "ours - gmmx loglik/pt"]
    return (
        f"## Cold: {RESTARTS} optimised starts each\n\n"
        f"Like for like: both optimise {RESTARTS} starts and keep the best (ours: "
        f"`FitConfig(n_init={RESTARTS}, n_best={RESTARTS})`, the {RESTARTS} k-means++ seeded "
        "candidates optimised together in one vmapped program by EM-preconditioned steps of "
        f"NumPyro's TraceEnum_ELBO loss; scikit-learn: `n_init={RESTARTS}`, {RESTARTS} EM runs "
        "from k-means inits, one after another, at its defaults and again with its BLAS and "
        "OpenMP pools at one thread: the ratio is against the faster). Not like for like: "
        "the inits (k-means++ seeds vs k-means solutions) and the stopping rules differ "
        "(ours: each candidate's last step "
        f'changed the loss by less than {WARM.warm_tol:g} nats per point). "1st call" is ours '
        "at a new window size: XLA compilation included (scikit-learn compiles nothing). "
        '"Compiled" is a second call on a fresh window of the same size; it is the figure '
        'compared with scikit-learn and gmmx, on that window. "(cap)": stopped at the step or '
        "iteration cap, not converged. gmmx 0.7 (a minimal JAX EM, float32) is timed as its "
        "README fits, compiled (a first call on another window of the size): scikit-learn's "
        "KMeans (10 inits) for the start, then one EM run; it has no tied covariance, so in 1-D "
        "it fits a variance per component (a bigger family: not like for like there).\n\n"
        + markdown_table(header, table)
    )


def _steps(o: dict[str, Any]) -> str:
    return f"{o['steps']}{'' if o['converged'] else ' (cap)'}"


def _warm_section(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        rounds = r["rounds"]
        table.append(
            [
                r["case"],
                f"{r['n_points']:,}",
                r["first_refit"]["ours"]["seconds"],
                " / ".join(f"{p['ours']['seconds']:.3g}" for p in rounds),
                " / ".join(_steps(p["ours"]) for p in rounds),
                statistics.median(p["ours"]["seconds_per_step"] for p in rounds),
                f"{r['warm_start_alone']['seconds']:.3g}"
                + (" (compiled)" if r["warm_start_alone"]["compilations"] else ""),
                " / ".join(f"{p['sklearn']['seconds']:.3g}" for p in rounds),
                " / ".join(
                    f"{p['sklearn_one_thread']['seconds']:.3g}"
                    for p in rounds
                    if "sklearn_one_thread" in p
                )
                or "-",
                " / ".join(str(p["sklearn"]["iterations"]) for p in rounds),
                _worst_ratio(rounds),
                " / ".join(f"{p['loglik_difference']:+.1e}" for p in rounds),
            ]
        )
    refits = [p for r in rows for p in (r["first_refit"], *r["rounds"])]
    won = sum(p["ours"]["candidates_optimised"] == 1 for p in refits)
    header = ["case", "points", "ours 1st refit, compile incl. (s)", "ours refit (s), each round"]
    header += ["ours steps", "ours s/step (refit / steps)", "ours, warm start alone (s)"]
    header += ["sklearn refit (s), each round", "sklearn at 1 thread (s), each round"]
    header += ["EM iters", "sklearn (faster setting) / ours, worst rounds"]
    header += ["loglik/pt ours - sklearn"]
    return (
        "## Warm: the trainer's refit vs scikit-learn's `warm_start=True`\n\n"
        "Like for like: both systems first fit a previous window, then refit fresh windows of "
        "the same size drawn from the same mixture, each warm-started from its own previous "
        "solution. Ours runs the trainer's default config (`n_init="
        f"{rows[0]['n_init']}`: the warm start and {rows[0]['n_init'] - 1} random candidates "
        "scored in one pass (the model's loss, its likelihood in closed form), on "
        f"a random sample of {WARM.refit_score_points:,} of the window's points; when the warm "
        "start scores best it alone is optimised, as in "
        f"{won} of {len(refits)} refits here); scikit-learn's `warm_start=True` runs EM from its "
        "previous solution (no restarts), twice on the same windows: at its defaults (its "
        "BLAS and OpenMP pools at their thread counts) and with both pools at one thread "
        "(`threadpoolctl`; two pools of threads can contend for 2 CPUs); the ratio is against "
        "the faster of the two, by worst round. Our warm refit takes EM-preconditioned steps "
        "(`mixture.precondition`: the gradient of NumPyro's TraceEnum_ELBO loss, preconditioned "
        "as Xu and Jordan show EM's step is), checks every "
        f"{WARM.em_chunk_steps} steps and stops when a step changed the loss by less than "
        f"{WARM.refit_tol:g} nats per point: scikit-learn's own rule (it stops when its lower "
        "bound changed by less than 1e-3 per point between iterations, that is after two "
        "M-steps at the earliest, the first one's change known; so does ours). The first "
        "refit at a size compiles ours (shown "
        f"separately); the {WARM_ROUNDS} rounds after it are the steady state `gmm-trainer run` "
        "sees, every round shown; the ratio is worst round over worst round. Our chain's first "
        "refit starts from our cold fit of the same mixture at that size, scikit-learn's from "
        "its fit of a previous window; the timed rounds "
        'start from each system\'s own fit of the same windows. "Warm start alone" is a '
        "diagnostic, not the trainer's config: the same refit with `n_init=1` (no random "
        "candidates scored), on one more window after three that compile its programs "
        '("(compiled)" where it still compiled one).\n\n' + markdown_table(header, table)
    )


def _worst_ratio(rounds: list[dict[str, Any]]) -> float:
    """scikit-learn's slowest round (its faster setting) over ours."""
    return sklearn_worst(rounds) / max(p["ours"]["seconds"] for p in rounds)


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
        "with `GMM_JAX_CACHE_DIR=off`. The cache holds JAX's compiled programs and, in its "
        "`programs/` subdirectory, the fit's traced programs (`mixture.program_cache`): warm, a "
        "new process neither traces nor compiles the fit. Wall: the whole process (start-up, "
        "imports, cache loads, fit, output); fit: the fit's own seconds as the CLI prints them. "
        f"scikit-learn for reference (tied, the same family in 1-D, {n_init} EM runs: as many as "
        "we optimise), in this process and as a new Python process that imports it, reads the "
        "CSV and fits.\n\n" + markdown_table(["run", "wall (s)", "fit (s)", "loglik/pt"], table)
    )


def markdown(payload: dict[str, Any]) -> str:
    m, load = payload["machine"], payload["load_average_1min"]
    return (
        "# Fit time and quality vs scikit-learn\n\n"
        f"{m['cpus']} CPUs, {m['machine']}, JAX {m['jax']} on {m['jax_backend']}, Python "
        f"{m['python']}; 1-minute load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end (this benchmark counts for 1 to 2 of it). One process, "
        f"one run of each (no best-of), each timed run in this process after a "
        f"{payload['quiet_s']:g} s pause (so that it starts on an idle machine: scikit-learn's "
        "multithreaded BLAS leaves worker threads spinning after a fit, which took a CPU from "
        "the next run). "
        "Log-likelihoods are the "
        "mean log p(x) per point on the window fitted, both models scored by the same float64 "
        "evaluator; positive differences favour ours. Ours is a MAP fit (weak priors placed on "
        "the data) of the enumerated ELBO, by EM-preconditioned steps (cold fits and warm "
        "refits); scikit-learn's is maximum-likelihood EM (its defaults: it stops when the "
        "mean log-likelihood per point changes by less than 1e-3, or after 100 "
        "iterations)."
        + (
            f" The warm section was rerun on its own after the rest (`--warm-only`; load "
            f"average {payload['warm_rerun']['load_average_1min']:.1f} at its end); each size's "
            "chain starts from an untimed cold fit of ours."
            if "warm_rerun" in payload
            else ""
        )
        + "\n\n"
        + f"{payload['scope']}\n\n"
        + _cold_section(payload["cold"])
        + "\n"
        + _warm_section(payload["warm"])
        + "\n"
        + _faithful_section(payload["old_faithful"])
        + "\n![fit time](fit.png)\n"
    )


def plot(warm: list[dict[str, Any]]) -> None:
    """Warm refit seconds (worst round) by window size, one panel per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in warm))
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4), dpi=100)
    for ax, case in zip(np.atleast_1d(axes), cases, strict=True):
        rows = [r for r in warm if r["case"] == case]
        n = [r["n_points"] for r in rows]
        for who, label in (
            ("ours", "ours: the trainer's refit"),
            ("sklearn", "sklearn warm_start"),
        ):
            worst = [max(p[who]["seconds"] for p in r["rounds"]) for r in rows]
            ax.plot(n, worst, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="points", ylabel="seconds (worst round)")
        ax.set_title(f"Warm refit, {case}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "fit.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k points only")
    parser.add_argument("--sizes", type=int, nargs="+", help="these sizes instead")
    parser.add_argument(
        "--faithful-only",
        action="store_true",
        help="rerun only the Old Faithful CLI runs, into the existing results",
    )
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="rerun only the warm refits (each size's chain from an untimed cold fit), into "
        "the existing results",
    )
    args = parser.parse_args(argv)
    if args.warm_only:
        payload = json.loads((RESULTS / "fit.json").read_text())
        if payload.get("quiet_s") != QUIET_S:
            raise SystemExit(
                "bench.fit --warm-only: the results on file were timed with another pause; "
                "rerun the whole benchmark"
            )
        enable_compilation_cache("off")
        warm = []
        for case in CASES:
            for n in sorted({row["n_points"] for row in payload["warm"]}):
                start = fit_map(
                    next(windows(case, n, 0)),
                    jax.random.PRNGKey(0),
                    FitConfig(case.k, case.covariance),
                ).params
                warm.append(bench_warm(case, n, start)[0])
        payload["warm"] = warm
        payload["warm_rerun"] = {"machine": machine(), "load_average_1min": os.getloadavg()[0]}
        path = write_results("fit", payload, markdown(payload))
        plot(warm)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.faithful_only:
        payload = json.loads((RESULTS / "fit.json").read_text())
        payload["old_faithful"] = old_faithful()
        path = write_results("fit", payload, markdown(payload))
        print(f"wrote {path}", file=sys.stderr)
        return 0
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    # "Compile included" must mean it: no persistent cache in this process.
    enable_compilation_cache("off")
    load_before = os.getloadavg()[0]
    cold, warm = [], []
    for case in CASES:
        for n in sorted(sizes):
            row, prev = bench_cold(case, n)
            cold.append(row)
            row, prev = bench_warm(case, n, prev)
            warm.append(row)
    payload = {
        "machine": machine(),
        "scope": SCOPE,
        # Other work on the machine slows both sides; the 1-minute load average shows it.
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "quiet_s": QUIET_S,
        "cold": cold,
        "warm": warm,
        "old_faithful": old_faithful(),
    }
    md = markdown(payload)
    path = write_results("fit", payload, md)
    plot(warm)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
