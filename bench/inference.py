"""Classifier throughput at batch sizes 1 to 65,536, all methods in one process and run.

Methods: the service's jitted infer_discrete classifier (MAP, plus probabilities and log p(x));
a hand-written closed-form JAX classifier jitted per exact shape (the limit), compiled with the
service's XLA options (`mixture.classify.serving_jit`) so that the two differ by what
infer_discrete, exact residuals and padding cost, its outputs read with jax.device_get; beside
it, the same closed form with its outputs read as the service reads its own (np.asarray, about
12 µs less a call), and with JAX's default XLA options (YNNPACK reductions, slow at large
batches on a CPU); scikit-learn's predict and predict_proba on the same parameters; and the
tutorial's un-jitted infer_discrete classifier. Each batch size is measured in ROUNDS rounds,
the methods taking turns, and each figure is the best call of all rounds (the machine's other
load moves less between methods so). Writes bench/results/inference.{md,json,png}.

    python -m bench.inference [--quick]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.contrib.funsor import infer_discrete
from sklearn.mixture import GaussianMixture

from bench._common import best_seconds, machine, markdown_table, write_results
from mixture.classify import make_classifier, posterior, serving_jit
from mixture.model import assignment_model
from mixture.params import MixtureParams

PARAMS = MixtureParams(
    np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
)
BATCHES = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
#: Rounds per batch size; the methods take turns within each.
ROUNDS = 5


def _closed_form(points, params):  # type: ignore[no-untyped-def]
    # Residuals on the device in float32: the limit (the service takes them in float64).
    probs, log_px, _ = posterior(points[None] - params.locs[:, None], params)
    return jnp.argmax(probs, axis=0), probs, log_px


closed_form = serving_jit(_closed_form)
#: The same with JAX's default XLA options (YNNPACK reductions on a CPU).
closed_form_defaults = jax.jit(_closed_form)


def read(outputs: tuple[jax.Array, ...]) -> list[np.ndarray]:
    """Outputs on the host, read as the service reads its own on a CPU (np.asarray, without
    jax.device_get's tree walk)."""
    return [np.asarray(out) for out in outputs]


def tutorial_classifier(points, params):  # type: ignore[no-untyped-def]
    """The tutorial's serving path: infer_discrete traced eagerly on every call, no jit."""
    model = infer_discrete(assignment_model, temperature=0, first_available_dim=-2)
    tr = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(points, params)
    return np.asarray(tr["assignment"]["value"])


def sklearn_model(params: MixtureParams) -> GaussianMixture:
    gm = GaussianMixture(2, covariance_type="tied")
    gm.weights_ = params.weights
    gm.means_ = params.locs
    gm.covariances_ = np.diag(params.scale**2)
    gm.precisions_cholesky_ = np.diag(1 / params.scale)
    return gm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes (smoke run)")
    args = parser.parse_args(argv)
    batches = [1, 256, 4096] if args.quick else BATCHES

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(max(batches), 1)) * 5 + 6).astype(np.float32)
    clf = make_classifier(2, 1, max_batch=max(batches))
    warm = clf.warmup()
    jparams = MixtureParams(*(jnp.asarray(v, jnp.float32) for v in PARAMS))
    prepared = clf.prepare(PARAMS)  # once per model version, as the worker does
    gm = sklearn_model(PARAMS)

    rows, results = [], []
    for b in batches:
        x = data[:b]
        xj = jnp.asarray(x)
        for program in (closed_form, closed_form_defaults):  # compile outside the timing
            jax.block_until_ready(program(x, jparams))
        calls = {
            "infer_discrete_jit": lambda: clf(x, prepared),
            "closed_form_jit": lambda: jax.device_get(closed_form(x, jparams)),
            "closed_form_jit_read_as_ours": lambda: read(closed_form(x, jparams)),
            "closed_form_jit_xla_defaults": lambda: jax.device_get(
                closed_form_defaults(x, jparams)
            ),
            "sklearn_predict": lambda: gm.predict(x),
            "sklearn_predict_proba": lambda: gm.predict_proba(x),
        }
        t = {name: float("inf") for name in calls}
        for _ in range(ROUNDS):
            for name, call in calls.items():
                t[name] = min(t[name], best_seconds(call, min_total=0.1))
        t["tutorial_unjitted"] = best_seconds(
            lambda: tutorial_classifier(xj, jparams), min_total=0.2, min_reps=2, max_reps=20
        )
        tput = {k: b / v for k, v in t.items()}
        ours = tput["infer_discrete_jit"]
        entry = {
            "batch": b,
            "seconds": t,
            "points_per_second": tput,
            "ratio_vs_closed_form": ours / tput["closed_form_jit"],
            "ratio_vs_closed_form_read_as_ours": ours / tput["closed_form_jit_read_as_ours"],
            "ratio_vs_closed_form_xla_defaults": ours / tput["closed_form_jit_xla_defaults"],
            "ratio_vs_sklearn_predict": ours / tput["sklearn_predict"],
            "ratio_vs_sklearn_predict_proba": ours / tput["sklearn_predict_proba"],
            "speedup_vs_tutorial": ours / tput["tutorial_unjitted"],
        }
        results.append(entry)
        rows.append(
            [
                b,
                ours,
                tput["closed_form_jit"],
                tput["closed_form_jit_read_as_ours"],
                tput["closed_form_jit_xla_defaults"],
                tput["sklearn_predict"],
                tput["sklearn_predict_proba"],
                tput["tutorial_unjitted"],
                entry["ratio_vs_closed_form"],
                entry["ratio_vs_closed_form_read_as_ours"],
                entry["ratio_vs_sklearn_predict"],
                entry["speedup_vs_tutorial"],
            ]
        )
        print(
            f"batch {b:6d}: {ours:,.0f} pts/s ({entry['ratio_vs_closed_form']:.2f}x closed form, "
            f"{entry['ratio_vs_closed_form_read_as_ours']:.2f}x read as ours, "
            f"{entry['ratio_vs_sklearn_predict']:.2f}x sklearn predict)",
            file=sys.stderr,
        )
    recompiles = clf.compilations - warm
    payload = {
        "machine": machine(),
        "warmup_compilations": warm,
        "recompiles_after_warmup": recompiles,
        "sizes": list(clf.sizes),
        "rounds": ROUNDS,
        "closed_form": "jitted per shape with the service's XLA options, outputs read with "
        "jax.device_get (read_as_ours: with np.asarray, as the service reads its own; "
        "xla_defaults: JAX's default XLA options)",
        "results": results,
    }
    md = (
        "# Classifier throughput (points/second)\n\n"
        f"Backend: {payload['machine']['jax_backend']} ({payload['machine']['cpus']} CPUs). "
        f"All methods measured in one process and run; best of repeated calls over {ROUNDS} "
        f"rounds, the methods taking turns. Padding sizes {list(clf.sizes)}; compilations at "
        f"warm-up {warm}, recompiles afterwards **{recompiles}**. The closed form is compiled "
        "with the service's XLA options (`mixture.classify.serving_jit`), its outputs read with "
        "`jax.device_get`; the next two columns are the same closed form with its outputs read "
        "as the service reads its own (`np.asarray`), and with JAX's default XLA options "
        "(YNNPACK reductions, slow at large batches on a CPU).\n\n"
        + markdown_table(
            [
                "batch",
                "infer_discrete (jit)",
                "closed form (jit)",
                "closed form, read as ours",
                "closed form, XLA defaults",
                "sklearn predict",
                "sklearn predict_proba",
                "tutorial (no jit)",
                "ours / closed form",
                "ours / closed form read as ours",
                "ours / sklearn predict",
                "ours / tutorial",
            ],
            rows,
        )
        + "\nOurs returns the MAP assignment, all membership probabilities and log p(x) per point; "
        "sklearn predict returns labels only.\n\n![throughput](inference.png)\n"
    )
    path = write_results("inference", payload, md)
    plot(results)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench._common import RESULTS

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    batches = [r["batch"] for r in results]
    for key, label in [
        ("infer_discrete_jit", "infer_discrete, jitted (ours)"),
        ("closed_form_jit", "closed form, jitted"),
        ("closed_form_jit_read_as_ours", "closed form, jitted, outputs read as ours"),
        ("closed_form_jit_xla_defaults", "closed form, jitted, XLA defaults"),
        ("sklearn_predict", "sklearn predict"),
        ("sklearn_predict_proba", "sklearn predict_proba"),
        ("tutorial_unjitted", "tutorial, un-jitted"),
    ]:
        ax.plot(batches, [r["points_per_second"][key] for r in results], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("points / second")
    ax.set_title("Mixture classifier throughput")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "inference.png")


if __name__ == "__main__":
    sys.exit(main())
