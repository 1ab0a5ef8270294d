"""Classifier throughput at batch sizes 1 to 65,536, all methods in one process and run.

Methods: the service's jitted infer_discrete classifier (MAP, plus probabilities and log p(x));
a hand-written closed-form JAX classifier jitted per exact shape (the limit); scikit-learn's
predict and predict_proba on the same parameters; and the tutorial's un-jitted infer_discrete
classifier. Writes bench/results/inference.{md,json,png}.

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
from mixture.classify import make_classifier, posterior
from mixture.model import assignment_model
from mixture.params import MixtureParams

PARAMS = MixtureParams(
    np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
)
BATCHES = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]


@jax.jit
def closed_form(points, params):  # type: ignore[no-untyped-def]
    # Residuals on the device in float32: the limit (the service takes them in float64).
    probs, log_px, _ = posterior(points[None] - params.locs[:, None], params)
    return jnp.argmax(probs, axis=0), probs, log_px


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
        jax.block_until_ready(closed_form(xj, jparams))  # compile this shape outside the timing
        t = {
            "infer_discrete_jit": best_seconds(lambda: clf(x, prepared)),
            "closed_form_jit": best_seconds(lambda: jax.device_get(closed_form(x, jparams))),
            "sklearn_predict": best_seconds(lambda: gm.predict(x)),
            "sklearn_predict_proba": best_seconds(lambda: gm.predict_proba(x)),
            "tutorial_unjitted": best_seconds(
                lambda: tutorial_classifier(xj, jparams), min_total=0.2, min_reps=2, max_reps=20
            ),
        }
        tput = {k: b / v for k, v in t.items()}
        ours = tput["infer_discrete_jit"]
        entry = {
            "batch": b,
            "seconds": t,
            "points_per_second": tput,
            "ratio_vs_closed_form": ours / tput["closed_form_jit"],
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
                tput["sklearn_predict"],
                tput["sklearn_predict_proba"],
                tput["tutorial_unjitted"],
                entry["ratio_vs_closed_form"],
                entry["ratio_vs_sklearn_predict"],
                entry["speedup_vs_tutorial"],
            ]
        )
        print(
            f"batch {b:6d}: {ours:,.0f} pts/s ({entry['ratio_vs_closed_form']:.2f}x closed form, "
            f"{entry['ratio_vs_sklearn_predict']:.2f}x sklearn predict)",
            file=sys.stderr,
        )
    recompiles = clf.compilations - warm
    payload = {
        "machine": machine(),
        "warmup_compilations": warm,
        "recompiles_after_warmup": recompiles,
        "sizes": list(clf.sizes),
        "results": results,
    }
    md = (
        "# Classifier throughput (points/second)\n\n"
        f"Backend: {payload['machine']['jax_backend']} ({payload['machine']['cpus']} CPUs). "
        f"All methods measured in one process and run; best of repeated calls. "
        f"Padding sizes {list(clf.sizes)}; compilations at warm-up {warm}, "
        f"recompiles afterwards **{recompiles}**.\n\n"
        + markdown_table(
            [
                "batch",
                "infer_discrete (jit)",
                "closed form (jit)",
                "sklearn predict",
                "sklearn predict_proba",
                "tutorial (no jit)",
                "ours / closed form",
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
