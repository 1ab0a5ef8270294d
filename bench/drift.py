"""Drift alarms: false alarms on stationary streams, detection delay after a location shift.

Simulated, numpy only (no Kafka, no JAX): records are sampled from a known 2-component 1-D
mixture (the tutorial's fitted model) and scored exactly by it (log p(x) with numpy), in
micro-batches; each batch's mean log p(x) and record count go to `stream_app.drift.
DriftDetector`, as the worker feeds it. Several detector settings see the same streams.

- Stationary: many seeds x many batches of data from the model itself -> false alarms per
  10,000 batches (each alarm re-arms the detector, so every false alarm is counted).
- Shift: a stationary stretch, then every component's location moves by d component standard
  deviations (d = 0.25, 0.5, 1, 2) -> records from the shift to the alarm (median, 90th
  percentile, worst over seeds).

Writes bench/results/drift.{md,json}.

    python -m bench.drift [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench._common import markdown_table, write_results
from stream_app.drift import (
    DEFAULT_BLOCK_RECORDS,
    DEFAULT_DELTA,
    DEFAULT_THRESHOLD,
    DEFAULT_WARMUP_BLOCKS,
    DriftDetector,
)

# The tutorial's fitted model (bench/inference.py's PARAMS): weights, locations, shared scale.
WEIGHTS = np.array([0.375, 0.625])
LOCS = np.array([0.4989, 10.9845])
SCALE = 0.6514
SHIFTS = (0.25, 0.5, 1.0, 2.0)
BATCH = 256
CHUNK_RECORDS = 1 << 19  # records sampled at a time (memory ~ 4 MiB per array)


@dataclass(frozen=True)
class Setting:
    threshold: float
    warmup_blocks: int
    delta: float = DEFAULT_DELTA
    block_records: int = DEFAULT_BLOCK_RECORDS

    @property
    def name(self) -> str:
        return f"h={self.threshold:g}, warm-up {self.warmup_blocks}, delta {self.delta:g}"

    @property
    def default(self) -> bool:
        return (self.threshold, self.warmup_blocks, self.delta, self.block_records) == (
            DEFAULT_THRESHOLD,
            DEFAULT_WARMUP_BLOCKS,
            DEFAULT_DELTA,
            DEFAULT_BLOCK_RECORDS,
        )

    def detector(self) -> DriftDetector:
        return DriftDetector(
            threshold=self.threshold,
            delta=self.delta,
            warmup_blocks=self.warmup_blocks,
            block_records=self.block_records,
        )


SETTINGS = [Setting(h, 32) for h in (12.0, 16.0)] + [
    Setting(h, 64) for h in (10.0, 12.0, 14.0, 16.0)
]


def log_px(x: np.ndarray) -> np.ndarray:
    """Exact log p(x) under the model."""
    z = (x[:, None] - LOCS[None, :]) / SCALE
    comp = np.log(WEIGHTS)[None, :] - 0.5 * z * z - np.log(SCALE * np.sqrt(2 * np.pi))
    return np.logaddexp(comp[:, 0], comp[:, 1])


def sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """n records from the mixture with every location moved by `shift` component sds."""
    comp = (rng.random(n) >= WEIGHTS[0]).astype(np.intp)
    return LOCS[comp] + SCALE * (shift + rng.standard_normal(n))


def batch_stats(
    rng: np.random.Generator, sizes: np.ndarray, shift: float = 0.0
) -> tuple[list[float], list[int]]:
    """Each batch's mean log p(x) and its record count, for batches of the given sizes."""
    lp = log_px(sample(rng, int(sizes.sum()), shift))
    ends = np.cumsum(sizes)
    sums = np.add.reduceat(lp, ends - sizes)
    return (sums / sizes).tolist(), sizes.tolist()


def batch_sizes(rng: np.random.Generator, n: int, variable: bool) -> np.ndarray:
    if variable:  # the worker's micro-batches: anything from 1 record to GMM_MAX_BATCH (1024)
        return rng.integers(1, 1025, size=n)
    return np.full(n, BATCH)


def stationary(
    settings: list[Setting], seeds: int, batches: int, variable: bool = False
) -> list[dict[str, Any]]:
    """False alarms per setting over seeds x batches of stationary data."""
    alarms = [0] * len(settings)
    records = 0
    per_chunk = max(1, CHUNK_RECORDS // (512 if variable else BATCH))
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 1 if variable else 0])
        dets = [s.detector() for s in settings]
        done = 0
        while done < batches:
            sizes = batch_sizes(rng, min(per_chunk, batches - done), variable)
            means, counts = batch_stats(rng, sizes)
            for i, det in enumerate(dets):
                for m, c in zip(means, counts, strict=True):
                    if det.update(m, c) is not None:
                        alarms[i] += 1
            done += len(sizes)
            records += int(sizes.sum())
    out = []
    total = seeds * batches
    for s, a in zip(settings, alarms, strict=True):
        out.append(
            {
                "setting": s.name,
                "threshold": s.threshold,
                "warmup_blocks": s.warmup_blocks,
                "delta": s.delta,
                "block_records": s.block_records,
                "batches": "1 to 1024 records" if variable else f"{BATCH} records",
                "seeds": seeds,
                "batches_total": total,
                "records_total": records,
                "false_alarms": a,
                "false_alarms_per_10k_batches": 1e4 * a / total,
            }
        )
        print(f"stationary {out[-1]['batches']}, {s.name}: {a} in {total:,}", file=sys.stderr)
    return out


def delays(
    settings: list[Setting], seeds: int, before: int, cap: int, step: int = 8
) -> list[dict[str, Any]]:
    """Records from a location shift to the alarm, per setting and shift size."""
    found: dict[tuple[int, float], list[int | None]] = {
        (i, d): [] for i in range(len(settings)) for d in SHIFTS
    }
    early = [0] * len(settings)
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 2])
        dets = [s.detector() for s in settings]
        means, counts = batch_stats(rng, np.full(before, BATCH))
        for i, det in enumerate(dets):
            for m, c in zip(means, counts, strict=True):
                if det.update(m, c) is not None:
                    early[i] += 1
        for d in SHIFTS:
            srng = np.random.default_rng([seed, 3, int(d * 1000)])
            live = {i: copy.deepcopy(det) for i, det in enumerate(dets)}
            after = 0
            while live and after < cap:
                means, counts = batch_stats(srng, np.full(step, BATCH), shift=d)
                for i in list(live):
                    seen = after
                    for m, c in zip(means, counts, strict=True):
                        seen += c
                        if live[i].update(m, c) is not None:
                            found[(i, d)].append(seen)
                            del live[i]
                            break
                after += step * BATCH
            for i in live:
                found[(i, d)].append(None)
    out = []
    for (i, d), hits in found.items():
        got = np.array([h for h in hits if h is not None])
        s = settings[i]
        entry = {
            "setting": s.name,
            "threshold": s.threshold,
            "warmup_blocks": s.warmup_blocks,
            "delta": s.delta,
            "shift_sd": d,
            "seeds": seeds,
            "records_before_shift": before * BATCH,
            "false_alarms_before_shift": early[i],
            "missed_within_cap": len(hits) - len(got),
            "cap_records": cap,
            "median_records": float(np.median(got)) if got.size else None,
            "p90_records": float(np.percentile(got, 90)) if got.size else None,
            "worst_records": int(got.max()) if got.size else None,
        }
        out.append(entry)
        print(
            f"shift {d} sd, {s.name}: median {entry['median_records']}, "
            f"worst {entry['worst_records']}, missed {entry['missed_within_cap']}",
            file=sys.stderr,
        )
    return out


def drop_per_record(shift: float, n: int = 2_000_000) -> tuple[float, float]:
    """Mean drop of log p(x) per record after a shift, in nats and in per-record sds."""
    rng = np.random.default_rng(12345)
    base = log_px(sample(rng, n))
    moved = log_px(sample(rng, n, shift))
    return float(base.mean() - moved.mean()), float((base.mean() - moved.mean()) / base.std())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--seeds", type=int, default=80, help="stationary streams")
    parser.add_argument("--batches", type=int, default=50_000, help="batches per stream")
    parser.add_argument("--delay-seeds", type=int, default=200)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.batches, args.delay_seeds = 2, 5_000, 10
    t0 = time.perf_counter()
    default = next(s for s in SETTINGS if s.default)
    still = stationary(SETTINGS, args.seeds, args.batches)
    still += stationary(
        [s for s in SETTINGS if s.warmup_blocks == default.warmup_blocks],
        max(1, args.seeds // 8),
        args.batches // 5,
        variable=True,
    )
    before, cap = 1000, 400 * BATCH
    moved = delays(SETTINGS, args.delay_seeds, before, cap)
    drops = {d: drop_per_record(d) for d in SHIFTS}
    seconds = time.perf_counter() - t0

    import river

    payload = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "river": river.__version__,
            "cpus": os.cpu_count(),
        },
        "seconds": seconds,
        "model": {"weights": WEIGHTS.tolist(), "locs": LOCS.tolist(), "scale": SCALE},
        "default": default.name,
        "stationary": still,
        "shift": moved,
        "drop_per_record": {str(d): {"nats": v[0], "sd": v[1]} for d, v in drops.items()},
    }
    mark = {True: " (default)", False: ""}
    rows_still = [
        [
            r["setting"] + mark[r["setting"] == default.name],
            r["batches"],
            f"{r['batches_total']:,}",
            f"{r['records_total']:,}",
            r["false_alarms"],
            f"{r['false_alarms_per_10k_batches']:.3g}",
        ]
        for r in still
    ]
    rows_shift = [
        [
            r["setting"] + mark[r["setting"] == default.name],
            r["shift_sd"],
            f"{drops[r['shift_sd']][0]:.3g} ({drops[r['shift_sd']][1]:.2g} sd)",
            "-" if r["median_records"] is None else f"{r['median_records']:,.0f}",
            "-" if r["p90_records"] is None else f"{r['p90_records']:,.0f}",
            "-" if r["worst_records"] is None else f"{r['worst_records']:,}",
            r["missed_within_cap"],
            r["false_alarms_before_shift"],
        ]
        for r in sorted(moved, key=lambda r: (r["shift_sd"], r["warmup_blocks"], r["threshold"]))
    ]
    md = (
        "# Drift alarms (simulated)\n\n"
        "`stream_app.drift.DriftDetector` (River's Page-Hinkley, mode down, alpha 1, on block "
        f"means of >= {DEFAULT_BLOCK_RECORDS} records standardised by a warm-up, refined while "
        "in control) fed the "
        "per-batch mean log p(x) of records sampled from the tutorial's 2-component 1-D "
        f"mixture (weights {WEIGHTS.tolist()}, locations {LOCS.tolist()}, scale {SCALE}) and "
        "scored exactly by it. h: threshold in standard deviations of a block mean. "
        f"{seconds:,.0f} s on {os.cpu_count()} CPUs.\n\n"
        "## False alarms on stationary streams\n\n"
        + markdown_table(
            ["setting", "batches", "batches in all", "records", "false alarms", "per 10k batches"],
            rows_still,
        )
        + "\n## Delay after the locations move\n\n"
        f"{args.delay_seeds} seeds; {before:,} batches of {BATCH} records "
        f"({before * BATCH:,} records) before every location moves by the shift (in component "
        f"standard deviations); delay: records from the shift to the alarm; missed: no alarm "
        f"within {cap:,} records.\n\n"
        + markdown_table(
            [
                "setting",
                "shift (sd)",
                "drop of log p per record",
                "median delay",
                "p90",
                "worst",
                "missed",
                "false alarms before",
            ],
            rows_shift,
        )
    )
    if args.quick:
        print(md)
        return 0
    path = write_results("drift", payload, md)
    print(md)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
