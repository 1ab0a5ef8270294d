"""Shared helpers for benchmarks: repeat-until-stable timing and results in md, JSON and PNG."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mixture.params import MixtureParams

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def best_seconds(
    fn: Callable[[], Any], min_total: float = 0.3, min_reps: int = 3, max_reps: int = 1000
) -> float:
    """Best-of-repetitions wall time of fn(); repeats until min_total seconds and min_reps."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start < min_total
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> dict[str, Any]:
    import jax

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, payload: dict[str, Any], markdown: str) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    return RESULTS / f"{name}.md"


def sample(truth: MixtureParams, n: int, seed: Any) -> np.ndarray:
    """n points (N, D) float64 drawn from the mixture."""
    rng = np.random.default_rng(seed)
    locs, scale = np.asarray(truth.locs), np.asarray(truth.scale)
    z = rng.choice(truth.n_components, size=n, p=np.asarray(truth.weights))
    eps = rng.normal(size=(n, locs.shape[1]))
    if scale.ndim == 3:
        return locs[z] + np.einsum("nij,nj->ni", scale[z], eps)
    return locs[z] + np.broadcast_to(scale, locs.shape)[z] * eps
