"""The device benchmark: the classifier, the serving path and MAP fits, on the GPU and on the
same machine's CPU backend, in one process and one run of at most about 6 minutes.

    bash bench/device/run.sh [--quick]            # on the device machine, or here (CPU only)
    python -m bench.device.measure [--quick] [--out DIR] [--budget-s S]

Every case runs on each backend JAX has, the GPU first, then the CPU backend of the same
machine (`jax.default_device`), on the same data and keys:

- classifier: the service's jitted infer_discrete classifier (`mixture.classify`) called as the
  worker calls it (float64 points, which cross to the device as B x D float64 values, the
  residuals taken there), the same compiled program alone on those values, and the closed
  form (`mixture.classify.posterior` on the same residuals, jitted with the same options),
  batches 1k to 1M, for K=2, D=1 (the tutorial's shared scale) and K=16, D=16 full
  covariance; and what crosses to the device per batch, bytes and time: the points, against
  the K x B x D float32 residuals the classifier shipped when it took them on the host;
- serving: the worker's own slice steps without Kafka (`stream_app.batch`: parse_slice ->
  classify_slice -> encode_slice) on JSON records, in records/s and where the time goes;
- fit: `fit_map` with the trainer's FitConfig (from its default settings: K=2, D=1, tied-diag,
  100 candidates scored, the best 4 optimised), 100k and 1M points, cold (no warm start,
  compiled) and warm (each refit starts from the previous fit, on a fresh window).

A time budget bounds the run: each section may run until its share of the budget is spent
(what an earlier section leaves over goes to the next), cases left then are skipped and listed;
a CPU-side fit stops at a deadline, and its steady seconds per step and a projection to the
GPU fit's step count are reported instead of its time.

Writes DIR/device.{json,md} (DIR/device-cpu.{json,md} when JAX sees no GPU) after every
section, so a run cut short keeps what it measured, and prints a summary at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import os
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orjson

from bench._common import RESULTS, best_seconds, sample
from bench.device.report import summary, write
from mixture.classify import (
    Classifier,
    Prepared,
    ServingParams,
    classifier_for,
    default_sizes,
    posterior,
    residuals_on_device,
    serving_jit,
)
from mixture.fit import FitConfig, fit_map
from mixture.params import MixtureParams, ModelParams
from stream_app.batch import classify_slice, encode_slice, parse_slice
from stream_app.gc_policy import streaming_gc
from stream_app.model_state import ServingModel
from stream_app.records import InRecord
from trainer.settings import TrainerSettings


@dataclasses.dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]  # classifier batch sizes
    wide: tuple[int, int]  # (K, D) of the wide, full-covariance model
    serve_records: int  # records per serving case
    slices: tuple[int, ...]  # serving slice sizes
    fit_points: tuple[int, ...]  # fit window sizes
    warm_rounds: int  # timed warm refits after the first (compiling) one
    budget_s: float  # the whole measurement
    cpu_fit_deadline_s: float  # a CPU-side fit stops after this long
    min_total_s: float  # best_seconds: repeat each timed call at least this long


FULL = Sizes(
    batches=(1024, 4096, 16384, 65536, 262144, 1048576),
    wide=(16, 16),
    serve_records=32768,
    slices=(256, 1024, 4096),
    fit_points=(100_000, 1_000_000),
    warm_rounds=2,
    budget_s=320.0,
    cpu_fit_deadline_s=40.0,
    min_total_s=0.2,
)
QUICK = Sizes(
    batches=(1024, 4096),
    wide=(4, 4),
    serve_records=2048,
    slices=(256, 1024),
    fit_points=(2_000,),
    warm_rounds=1,
    budget_s=50.0,
    cpu_fit_deadline_s=8.0,
    min_total_s=0.02,
)
#: Cumulative shares of the budget: the end of each section, as a fraction of it.
SECTION_END = {"classifier": 0.35, "serving": 0.5, "fit": 1.0}
#: A GPU-side fit stops after this long (a safety net; none should come near it).
GPU_FIT_DEADLINE_S = 90.0

#: The fit benchmark's mixture: two 1-D components, as in bench.fit.
FIT_TRUTH = MixtureParams(np.array([0.6, 0.4]), np.array([[0.0], [5.0]]), np.array([1.0]))


# --- models and data -------------------------------------------------------------------------


def narrow_model() -> MixtureParams:
    """K=2, D=1 with the tutorial's shared scale (bench.inference's parameters)."""
    return MixtureParams(
        np.array([0.375, 0.625]), np.array([[0.4989], [10.9845]]), np.array([0.6514])
    )


def wide_model(k: int, d: int) -> MixtureParams:
    """K components in D dimensions with unequal, correlated full covariances (fixed seed)."""
    rng = np.random.default_rng(16)
    trils = []
    for s in np.linspace(0.5, 2.0, k):
        a = rng.normal(size=(d, d)) * s / np.sqrt(d)
        trils.append(np.linalg.cholesky(a @ a.T + 0.1 * s**2 * np.eye(d)))
    weights = rng.dirichlet(np.full(k, 5.0))
    return MixtureParams(weights, 4.0 * rng.normal(size=(k, d)), np.array(trils))


def models(sizes: Sizes) -> dict[str, MixtureParams]:
    k, d = sizes.wide
    return {"K=2, D=1, tied-diag": narrow_model(), f"K={k}, D={d}, full": wide_model(k, d)}


def backends() -> list[tuple[str, Any]]:
    """(name, device): the first accelerator JAX sees, if any, then the CPU backend."""
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    found = [(accelerators[0].platform, accelerators[0])] if accelerators else []
    return [*found, ("cpu", jax.devices("cpu")[0])]


class Deadlines:
    """Where each section must stop, from the start of the run (see SECTION_END)."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.skipped: list[str] = []

    def left(self, section: str) -> float:
        end = self.start + SECTION_END[section] * self.budget_s
        return end - time.perf_counter()

    def skip(self, section: str, what: str) -> bool:
        """True (and noted) when `section`'s time is spent, so `what` is not run."""
        if self.left(section) > 0:
            return False
        self.skipped.append(f"{section}: {what} (the section's share of the budget was spent)")
        print(f"  skipped: {what}", file=sys.stderr, flush=True)
        return True


# --- classifier ------------------------------------------------------------------------------


def _closed_form(words: Any, params: ServingParams) -> Any:
    """The closed form on the classifier program's own input: the same residuals (taken on
    the device from the points' float64 bits), then `posterior` and an argmax."""
    probs, log_px, _ = posterior(residuals_on_device(words, params.locs), params)
    return jnp.argmax(probs, axis=0), probs, log_px


def classifier_case(
    clf: Classifier, prepared: Prepared, closed_form: Any, x64: np.ndarray, sizes: Sizes
) -> dict:
    """One batch: the classifier as the worker calls it, its program alone, the closed form, and
    what crosses to the device."""
    b = len(x64)
    words, _ = clf.device_input(x64)  # what crosses: the points' float64 bits, B x D x 8 bytes
    no_keys = np.zeros((b, 2), np.uint32)  # temperature 0 reads no key
    t0 = time.perf_counter()
    clf(x64, prepared)  # compiles this batch size (b is one of the classifier's sizes)
    first_call = time.perf_counter() - t0
    jax.block_until_ready(closed_form(words, prepared.device))
    calls: dict[str, Callable[[], Any]] = {
        "infer_discrete": lambda: clf(x64, prepared),
        # The classifier's own compiled program (private: the bench looks inside), same inputs
        # and outputs as the closed form: what infer_discrete costs, host preparation aside.
        # Both read their outputs as the classifier does (`Classifier._fetch`).
        "infer_discrete_program": lambda: clf._fetch(clf._program(words, prepared.device, no_keys)),
        "closed_form": lambda: clf._fetch(closed_form(words, prepared.device)),
    }
    reps = 2 if b >= 262144 else 3
    seconds = {
        name: best_seconds(fn, min_total=sizes.min_total_s, min_reps=reps, max_reps=100)
        for name, fn in calls.items()
    }
    # What crosses to the device, each alone: the points, and the per-component float32
    # residuals (K x B x D) the classifier shipped when it took them on the host.
    residuals, _ = clf.residuals(x64, prepared)
    crossing = {"points": words, "per_component_residuals": residuals}
    transfer: dict[str, dict[str, float]] = {"bytes": {}, "seconds": {}}
    for name, array in crossing.items():
        transfer["bytes"][name] = int(array.nbytes)
        transfer["seconds"][name] = best_seconds(
            lambda: jax.block_until_ready(jax.device_put(array)),
            min_total=sizes.min_total_s,
            min_reps=reps,
            max_reps=100,
        )
    del residuals, crossing
    return {
        "batch": b,
        "first_call_seconds": first_call,
        "seconds": seconds,
        "points_per_second": {name: b / s for name, s in seconds.items()},
        "transfer": transfer,
    }


def bench_classifier(
    sizes: Sizes, found: list[tuple[str, Any]], clock: Deadlines, rows: list[dict]
) -> None:
    data = {name: sample(p, max(sizes.batches), 1) for name, p in models(sizes).items()}
    for backend, device in found:  # the GPU for every model first: the CPU side is cut first
        for name, params in models(sizes).items():
            with jax.default_device(device):
                clf = classifier_for(params, sizes=sizes.batches)
                prepared = clf.prepare(params)
                closed_form = serving_jit(_closed_form)  # this backend's options
                for b in sizes.batches:
                    if clock.skip("classifier", f"classifier {name} on {backend}, batch {b:,}"):
                        continue
                    row = classifier_case(clf, prepared, closed_form, data[name][:b], sizes)
                    rows.append({"model": name, "backend": backend, **row})
                    pps = row["points_per_second"]
                    print(
                        f"  classifier {name} {backend} batch {b:>9,}: infer_discrete "
                        f"{pps['infer_discrete']:,.0f} pts/s, closed form "
                        f"{pps['closed_form']:,.0f}",
                        file=sys.stderr,
                        flush=True,
                    )


# --- serving ---------------------------------------------------------------------------------


def json_records(params: MixtureParams, n: int) -> list[InRecord]:
    """n input records as the worker reads them: JSON values, Kafka coordinates, timestamps."""
    x = sample(params, n, 2)
    scalar = x.shape[1] == 1
    values = [
        orjson.dumps({"id": f"p-{i}", "x": float(row[0]) if scalar else row.tolist()})
        for i, row in enumerate(x)
    ]
    return [
        InRecord(None, v, "gmm.points", i % 4, i, 1.7e9 + i * 1e-4) for i, v in enumerate(values)
    ]


def serving_case(serving: ServingModel, records: list[InRecord], slice_size: int) -> dict:
    """The worker's steps for one batch, slice by slice, one after the other (the worker
    overlaps a slice's classification with the next slice's parsing and the last's encoding)."""
    dim = serving.model.mixture.dim
    stage = {"parse": 0.0, "classify": 0.0, "encode": 0.0}
    first = parse_slice(records[:slice_size], dim, 65536)
    classify_slice(first, serving)  # compiles this slice's padded size
    gc.collect()
    outputs = 0
    with streaming_gc():  # the collector as the worker runs it while streaming
        for start in range(0, len(records), slice_size):
            t0 = time.perf_counter()
            parsed = parse_slice(records[start : start + slice_size], dim, 65536)
            t1 = time.perf_counter()
            result, _ = classify_slice(parsed, serving)
            t2 = time.perf_counter()
            outcome = encode_slice(parsed, result, serving.model.version)
            t3 = time.perf_counter()
            outputs += len(outcome.assignments)
            stage["parse"] += t1 - t0
            stage["classify"] += t2 - t1
            stage["encode"] += t3 - t2
    if outputs != len(records):
        raise AssertionError(f"{outputs} assignments for {len(records)} records")
    n, total = len(records), sum(stage.values())
    return {
        "slice": slice_size,
        "records": n,
        "records_per_second": n / total,
        "host_only_records_per_second": n / (stage["parse"] + stage["encode"]),
        "microseconds_per_record": {k: 1e6 * v / n for k, v in stage.items()},
        "classify_share": stage["classify"] / total,
    }


def bench_serving(
    sizes: Sizes, found: list[tuple[str, Any]], clock: Deadlines, rows: list[dict]
) -> None:
    records = {name: json_records(p, sizes.serve_records) for name, p in models(sizes).items()}
    for backend, device in found:
        for name, params in models(sizes).items():
            for slice_size in sizes.slices:
                if clock.skip("serving", f"serving {name} on {backend}, slice {slice_size:,}"):
                    continue
                with jax.default_device(device):
                    # The worker's padding for this backend, up to the slice.
                    clf = classifier_for(params, sizes=default_sizes(slice_size, backend))
                    model = ModelParams(1, params)
                    serving = ServingModel(model, clf, clf.prepare(params))
                    row = serving_case(serving, records[name], slice_size)
                rows.append({"model": name, "backend": backend, **row})
                print(
                    f"  serving {name} {backend} slice {slice_size:,}: "
                    f"{row['records_per_second']:,.0f} records/s, classify "
                    f"{100 * row['classify_share']:.0f}%",
                    file=sys.stderr,
                    flush=True,
                )


# --- fits ------------------------------------------------------------------------------------


def trainer_config() -> FitConfig:
    """The FitConfig the trainer builds (trainer.cycle.Trainer) from its default settings."""
    s = TrainerSettings.from_env({})
    return FitConfig(
        n_components=s.n_components or 1,
        covariance=s.fit_covariance,
        reg_covar=s.reg_covar,
        n_init=s.restarts,
    )


class _Stop(Exception):
    """Raised from fit_map's progress callback to end a fit early."""


def timed_fit(
    x: np.ndarray,
    seed: int,
    config: FitConfig,
    warm: MixtureParams | None,
    deadline_s: float,
    first_chunk_only: bool = False,
) -> tuple[dict, MixtureParams | None]:
    """One fit_map call, stopped after its first chunk of steps or at the deadline.

    Returns its row and fitted parameters (None when stopped). The row's `seconds_per_step`
    is the steady rate between the first and the last chunk (setup and scoring excluded).
    """
    marks: list[tuple[float, int]] = []  # (seconds since the start, steps) after each chunk
    t0 = time.perf_counter()

    def progress(steps: int, _loss: float) -> None:
        marks.append((time.perf_counter() - t0, steps))
        if first_chunk_only or marks[-1][0] > deadline_s:
            raise _Stop

    params = None
    row: dict[str, Any] = {"n_points": len(x), "warm_start": warm is not None}
    try:
        r = fit_map(x, jax.random.PRNGKey(seed), config, warm_start=warm, progress=progress)
    except _Stop:
        row.update(finished=False, seconds=marks[-1][0], steps=marks[-1][1])
    else:
        params = r.params
        row.update(
            finished=True,
            seconds=time.perf_counter() - t0,
            steps=r.n_steps,
            converged=r.converged,
            candidates_optimised=len(r.candidate_losses),
            loss_per_point=r.final_loss / len(x),
        )
    row["first_chunk"] = {"seconds": marks[0][0], "steps": marks[0][1]} if marks else None
    if len(marks) >= 2:
        (ta, sa), (tb, sb) = marks[0], marks[-1]
        row["seconds_per_step"] = (tb - ta) / (sb - sa)
    return row, params


def fit_windows(n: int) -> list[np.ndarray]:
    """The windows of a fit case (compile, cold, then warm refits): the same on every backend."""
    return [sample(FIT_TRUTH, n, (n, i)) for i in range(3)]


def bench_fits(
    sizes: Sizes, found: list[tuple[str, Any]], clock: Deadlines, rows: list[dict]
) -> None:
    config = trainer_config()
    for backend, device in found:
        for n in sizes.fit_points:
            what = f"fit of {n:,} points on {backend}"
            if clock.skip("fit", what):
                continue
            cap = sizes.cpu_fit_deadline_s if backend == "cpu" else GPU_FIT_DEADLINE_S
            windows = fit_windows(n)
            row: dict[str, Any] = {"backend": backend, "n_points": n}
            with jax.default_device(device):
                # 1. Compiles the cold programs: candidates scored, one chunk of steps.
                row["compile"], _ = timed_fit(windows[0], 0, config, None, cap, True)
                # 2. Cold, compiled: the trainer's first fit.
                deadline = min(cap, max(clock.left("fit"), 1.0))
                row["cold"], fitted = timed_fit(windows[1], 1, config, None, deadline)
                # 3. Warm: refits on fresh windows, each from the previous fit (the first one
                # compiles the warm programs); from the truth when the cold fit was stopped.
                row["warm_from"] = "cold fit" if fitted is not None else "truth (cold stopped)"
                prev = fitted if fitted is not None else FIT_TRUTH
                row["warm"] = []
                for i in range(1 + sizes.warm_rounds):
                    if i and clock.skip("fit", f"{what}: warm round {i}"):
                        break
                    deadline = min(cap, max(clock.left("fit"), 1.0))
                    x = windows[2] if i == 0 else sample(FIT_TRUTH, n, (n, 3 + i))
                    refit, params = timed_fit(x, 2 + i, config, prev, deadline)
                    row["warm"].append(refit)
                    prev = params if params is not None else prev
            rows.append(row)
            _project(rows)
            _log_fit(row)


def _log_fit(row: dict) -> None:
    cold = row["cold"]
    warm = [w["seconds"] for w in row["warm"][1:]]
    print(
        f"  fit {row['n_points']:,} on {row['backend']}: cold {cold['seconds']:.3g}s "
        f"({cold['steps']} steps{'' if cold['finished'] else ', stopped'}), warm "
        + (" / ".join(f"{s:.3g}s" for s in warm) or "-"),
        file=sys.stderr,
        flush=True,
    )


def _project(rows: list[dict]) -> None:
    """A stopped CPU fit's projected time: its first chunk, then its steady seconds per step
    for the steps the GPU's fit of the same window took."""
    gpu = {r["n_points"]: r for r in rows if r["backend"] != "cpu"}
    for r in rows:
        if r["backend"] != "cpu" or r["n_points"] not in gpu:
            continue
        pairs = [(r["cold"], gpu[r["n_points"]]["cold"])]
        pairs += list(zip(r["warm"], gpu[r["n_points"]]["warm"], strict=False))
        for cpu_fit, gpu_fit in pairs:
            first, rate = cpu_fit.get("first_chunk"), cpu_fit.get("seconds_per_step")
            if cpu_fit["finished"] or not gpu_fit["finished"] or not first or rate is None:
                continue
            remaining = max(gpu_fit["steps"] - first["steps"], 0)
            cpu_fit["projected_seconds"] = first["seconds"] + rate * remaining


# --- run ------------------------------------------------------------------------------------


def machine(found: list[tuple[str, Any]]) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("jax", "jaxlib", "numpyro", "funsor", "optax", "numpy", "orjson"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    env = {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_"))}
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "backends": [
            {"name": name, "device": str(d), "kind": getattr(d, "device_kind", "")}
            for name, d in found
        ],
        "versions": versions,
        "environment": env,
    }


def gpu_memory(found: list[tuple[str, Any]]) -> dict[str, Any] | None:
    """The accelerator's allocator statistics (peak bytes in use, limit), if it has one."""
    for name, device in found:
        if name != "cpu":
            stats = device.memory_stats() or {}
            keys = ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")
            return {k: int(stats[k]) for k in keys if k in stats}
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (well under a minute)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS))
    parser.add_argument("--budget-s", type=float, default=None, help="time for the measurement")
    parser.add_argument(
        "--sections", default="classifier,serving,fit", help="comma-separated, in this order"
    )
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("GMM_DEVICE_BENCH_QUICK", "") not in ("", "0")
    sizes = QUICK if quick else FULL
    if args.budget_s is not None:
        sizes = dataclasses.replace(sizes, budget_s=args.budget_s)
    found = backends()
    gpu_seen = len(found) > 1
    name = "device" if gpu_seen else "device-cpu"
    if gpu_seen:
        print(f"JAX sees {found[0][1]} ({found[0][1].device_kind}): measuring it and the CPU")
    else:
        print(
            f"JAX sees no GPU (default backend: {jax.default_backend()}; devices: "
            f"{', '.join(map(str, jax.devices()))}): measuring the CPU backend alone, "
            f"results in {name}.*"
        )
    clock = Deadlines(sizes.budget_s)
    payload: dict[str, Any] = {
        "machine": machine(found),
        "gpu_seen": gpu_seen,
        "quick": quick,
        "budget_s": sizes.budget_s,
        "sizes": dataclasses.asdict(sizes),
        "skipped": clock.skipped,
        "fit_config": dataclasses.asdict(trainer_config()),
    }
    out = pathlib.Path(args.out)
    sections: dict[str, Callable[..., None]] = {
        "classifier": bench_classifier,
        "serving": bench_serving,
        "fit": bench_fits,
    }
    failed = False
    for section in args.sections.split(","):
        print(f"== {section}", file=sys.stderr, flush=True)
        payload[section] = []
        try:
            sections[section](sizes, found, clock, payload[section])
        except Exception as exc:  # keep what was measured, and the other sections
            traceback.print_exc()
            payload.setdefault("errors", {})[section] = f"{type(exc).__name__}: {exc}"
            failed = True
        payload["wall_seconds"] = time.perf_counter() - clock.start
        payload["gpu_memory"] = gpu_memory(found)
        path = write(out, name, payload)
    print(f"\nwrote {path} and {name}.json in {payload['wall_seconds']:.0f} s")
    print("\n".join(summary(payload)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
