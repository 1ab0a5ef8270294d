"""Drift alarms: false alarms on stationary streams, detection delay after a location shift.

Simulated, numpy only (no Kafka, no JAX): records are sampled from a known 2-component 1-D
mixture (the tutorial's fitted model) and scored exactly by it (log p(x) with numpy), in
micro-batches; each batch's per-record log p(x) goes to `stream_app.drift.DriftDetector`, as
the worker feeds it. Several detector settings see the same streams.

- Stationary: many seeds x many batches of data from the model itself -> false alarms per
  10,000 batches (each alarm re-arms the detector, so every false alarm is counted).
- Shift: a stationary stretch, then every component's location moves by d component standard
  deviations (d = 0.25, 0.5, 1, 2) -> records from the shift to the alarm (median, 90th
  percentile, worst over seeds).
- Glitches: the default setting sees the same stationary and shifted streams with 0.1 % of
  the records replaced by glitch points (|x| log-uniform in [1e3, 1e15], log p(x) from about
  -1e6 down to -1e30), with and without clipping; without clipping is the detector fed
  unclipped values (block means of the raw log p(x)), for comparison, and so is the detector
  clipped at the warm-up's 0.5 % quantiles themselves (no margin).

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
    DEFAULT_CLIP_MARGIN,
    DEFAULT_CLIP_QUANTILE,
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
GLITCH_RATE = 0.001  # share of records replaced by a glitch point in the glitch rows
GLITCH_LOG10_X = (3.0, 15.0)  # |x| of a glitch point is log-uniform in [1e3, 1e15]


@dataclass(frozen=True)
class Setting:
    threshold: float
    warmup_blocks: int
    delta: float = DEFAULT_DELTA
    block_records: int = DEFAULT_BLOCK_RECORDS
    clip_quantile: float | None = DEFAULT_CLIP_QUANTILE
    clip_margin: float = DEFAULT_CLIP_MARGIN

    @property
    def name(self) -> str:
        name = f"h={self.threshold:g}, warm-up {self.warmup_blocks}, delta {self.delta:g}"
        if self.clip_quantile is None:
            return name + ", no clipping"
        if (self.clip_quantile, self.clip_margin) != (DEFAULT_CLIP_QUANTILE, DEFAULT_CLIP_MARGIN):
            return name + f", clip q {self.clip_quantile:g} m {self.clip_margin:g}"
        return name

    @property
    def default(self) -> bool:
        return (
            self.threshold,
            self.warmup_blocks,
            self.delta,
            self.block_records,
            self.clip_quantile,
            self.clip_margin,
        ) == (
            DEFAULT_THRESHOLD,
            DEFAULT_WARMUP_BLOCKS,
            DEFAULT_DELTA,
            DEFAULT_BLOCK_RECORDS,
            DEFAULT_CLIP_QUANTILE,
            DEFAULT_CLIP_MARGIN,
        )

    def detector(self) -> DriftDetector:
        return DriftDetector(
            threshold=self.threshold,
            delta=self.delta,
            warmup_blocks=self.warmup_blocks,
            block_records=self.block_records,
            clip_quantile=self.clip_quantile,
            clip_margin=self.clip_margin,
        )


SETTINGS = [Setting(h, 32) for h in (12.0, 16.0)] + [
    Setting(h, 64) for h in (10.0, 12.0, 14.0, 16.0)
]
DEFAULT = next(s for s in SETTINGS if s.default)
#: The default setting fed unclipped values: the comparison rows.
UNCLIPPED = Setting(DEFAULT.threshold, DEFAULT.warmup_blocks, clip_quantile=None)
#: The default setting clipped at the warm-up's 0.5 % quantiles themselves (no margin): what a
#: range inside the data costs.
QUANTILES = Setting(DEFAULT.threshold, DEFAULT.warmup_blocks, clip_quantile=0.005, clip_margin=0)


def log_px(x: np.ndarray) -> np.ndarray:
    """Exact log p(x) under the model."""
    z = (x[:, None] - LOCS[None, :]) / SCALE
    comp = np.log(WEIGHTS)[None, :] - 0.5 * z * z - np.log(SCALE * np.sqrt(2 * np.pi))
    return np.logaddexp(comp[:, 0], comp[:, 1])


def sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """n records from the mixture with every location moved by `shift` component sds."""
    comp = (rng.random(n) >= WEIGHTS[0]).astype(np.intp)
    return LOCS[comp] + SCALE * (shift + rng.standard_normal(n))


def glitch(lp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `lp` with GLITCH_RATE of its records replaced by glitch points' log p(x)."""
    hit = np.flatnonzero(rng.random(lp.size) < GLITCH_RATE)
    x = 10.0 ** rng.uniform(*GLITCH_LOG10_X, hit.size) * rng.choice([-1.0, 1.0], hit.size)
    out = lp.copy()
    out[hit] = log_px(x)
    return out


def batches(lp: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Each batch's per-record log p(x) (views of `lp`), for batches of the given sizes."""
    return np.split(lp, np.cumsum(sizes)[:-1])


def feed(det: DriftDetector, slices: list[np.ndarray]) -> int:
    """Feeds slices to a detector; its alarms."""
    update = det.update
    return sum(update(s) is not None for s in slices)


def batch_sizes(rng: np.random.Generator, n: int, variable: bool) -> np.ndarray:
    if variable:  # the worker's micro-batches: anything from 1 record to GMM_MAX_BATCH (1024)
        return rng.integers(1, 1025, size=n)
    return np.full(n, BATCH)


def stationary(
    settings: list[Setting],
    seeds: int,
    n_batches: int,
    variable: bool = False,
    glitched: list[Setting] | None = None,
) -> list[dict[str, Any]]:
    """False alarms per setting over seeds x batches of stationary data; the `glitched`
    settings see the same data with GLITCH_RATE of the records replaced by glitch points."""
    glitched = glitched or []
    runs = [(s, 0.0) for s in settings] + [(s, GLITCH_RATE) for s in glitched]
    alarms = [0] * len(runs)
    records = 0
    per_chunk = max(1, CHUNK_RECORDS // (512 if variable else BATCH))
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 1 if variable else 0])
        grng = np.random.default_rng([seed, 4])
        dets = [s.detector() for s, _ in runs]
        done = 0
        while done < n_batches:
            sizes = batch_sizes(rng, min(per_chunk, n_batches - done), variable)
            lp = log_px(sample(rng, int(sizes.sum())))
            clean = batches(lp, sizes)
            dirty = batches(glitch(lp, grng), sizes) if glitched else clean
            for i, det in enumerate(dets):
                alarms[i] += feed(det, dirty if runs[i][1] else clean)
            done += len(sizes)
            records += int(sizes.sum())
    out = []
    total = seeds * n_batches
    for (s, rate), a in zip(runs, alarms, strict=True):
        out.append(
            {
                "setting": s.name,
                "threshold": s.threshold,
                "warmup_blocks": s.warmup_blocks,
                "delta": s.delta,
                "block_records": s.block_records,
                "clip_quantile": s.clip_quantile,
                "clip_margin": s.clip_margin,
                "batches": "1 to 1024 records" if variable else f"{BATCH} records",
                "glitch_rate": rate,
                "seeds": seeds,
                "batches_total": total,
                "records_total": records,
                "false_alarms": a,
                "false_alarms_per_10k_batches": 1e4 * a / total,
            }
        )
        print(
            f"stationary {out[-1]['batches']}, glitches {rate:g}, {s.name}: {a} in {total:,}",
            file=sys.stderr,
        )
    return out


def delays(
    settings: list[Setting],
    seeds: int,
    before: int,
    cap: int,
    step: int = 8,
    glitched: list[Setting] | None = None,
) -> list[dict[str, Any]]:
    """Records from a location shift to the alarm, per setting and shift size; the `glitched`
    settings see the same data with GLITCH_RATE of the records replaced by glitch points."""
    glitched = glitched or []
    runs = [(s, 0.0) for s in settings] + [(s, GLITCH_RATE) for s in glitched]
    found: dict[tuple[int, float], list[int | None]] = {
        (i, d): [] for i in range(len(runs)) for d in SHIFTS
    }
    early = [0] * len(runs)
    sizes = np.full(before, BATCH)
    step_sizes = np.full(step, BATCH)
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 2])
        grng = np.random.default_rng([seed, 5])
        dets = [s.detector() for s, _ in runs]
        lp = log_px(sample(rng, before * BATCH))
        clean = batches(lp, sizes)
        dirty = batches(glitch(lp, grng), sizes) if glitched else clean
        for i, det in enumerate(dets):
            early[i] += feed(det, dirty if runs[i][1] else clean)
        for d in SHIFTS:
            srng = np.random.default_rng([seed, 3, int(d * 1000)])
            sgrng = np.random.default_rng([seed, 6, int(d * 1000)])
            live = {i: copy.deepcopy(det) for i, det in enumerate(dets)}
            after = 0
            while live and after < cap:
                lp = log_px(sample(srng, step * BATCH, shift=d))
                clean = batches(lp, step_sizes)
                dirty = batches(glitch(lp, sgrng), step_sizes) if glitched else clean
                for i in list(live):
                    seen = after
                    for piece in dirty if runs[i][1] else clean:
                        seen += piece.size
                        if live[i].update(piece):
                            found[(i, d)].append(seen)
                            del live[i]
                            break
                after += step * BATCH
            for i in live:
                found[(i, d)].append(None)
    out = []
    for (i, d), hits in found.items():
        got = np.array([h for h in hits if h is not None])
        s, rate = runs[i]
        entry = {
            "setting": s.name,
            "threshold": s.threshold,
            "warmup_blocks": s.warmup_blocks,
            "delta": s.delta,
            "clip_quantile": s.clip_quantile,
            "clip_margin": s.clip_margin,
            "glitch_rate": rate,
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
            f"shift {d} sd, glitches {rate:g}, {s.name}: median {entry['median_records']}, "
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


def comparison(
    still: list[dict[str, Any]], moved: list[dict[str, Any]], compared: list[tuple[str, Setting]]
) -> str:
    """What clipping changes: the default setting against the same without clipping (and
    clipped otherwise), on the same clean and glitched streams."""

    def alarms(s: Setting, rate: float) -> str:
        r = next(
            r
            for r in still
            if r["setting"] == s.name and r["glitch_rate"] == rate and "1 to" not in r["batches"]
        )
        return f"{r['false_alarms']:,}"

    def delay(s: Setting, rate: float, d: float) -> str:
        r = next(
            r
            for r in moved
            if r["setting"] == s.name and r["glitch_rate"] == rate and r["shift_sd"] == d
        )
        text = " / ".join(
            "-" if r[k] is None else f"{r[k]:,.0f}"
            for k in ("median_records", "p90_records", "worst_records")
        )
        return text + (f", {r['missed_within_cap']} missed" if r["missed_within_cap"] else "")

    rows = []
    for rate in (0.0, GLITCH_RATE):
        label = "none" if rate == 0 else f"{rate:.1%}"
        for what, s in compared:
            rows.append([label, what, alarms(s, rate), *(delay(s, rate, d) for d in SHIFTS)])
    return (
        "## Clipped against unclipped\n\n"
        f"{compared[0][1].name}, on the same streams, with its clipping and fed other values: "
        "false alarms on the stationary streams of "
        f"{BATCH}-record batches, and delay (records: median / p90 / worst; missed: no alarm "
        "within the cap) after the locations move.\n\n"
        + markdown_table(
            ["glitches", "records", "false alarms", *(f"delay, {d:g} sd" for d in SHIFTS)],
            rows,
        )
    )


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
    default = DEFAULT
    compared = [DEFAULT, UNCLIPPED, QUANTILES]
    still = stationary(
        [*SETTINGS, UNCLIPPED, QUANTILES], args.seeds, args.batches, glitched=compared
    )
    still += stationary(
        [s for s in SETTINGS if s.warmup_blocks == default.warmup_blocks],
        max(1, args.seeds // 8),
        args.batches // 5,
        variable=True,
    )
    before, cap = 1000, 400 * BATCH
    moved = delays(
        [*SETTINGS, UNCLIPPED, QUANTILES], args.delay_seeds, before, cap, glitched=compared
    )
    drops = {d: drop_per_record(d) for d in SHIFTS}
    seconds = time.perf_counter() - t0

    payload = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
        },
        "seconds": seconds,
        "model": {"weights": WEIGHTS.tolist(), "locs": LOCS.tolist(), "scale": SCALE},
        "default": default.name,
        "clip_quantile": DEFAULT_CLIP_QUANTILE,
        "clip_margin": DEFAULT_CLIP_MARGIN,
        "glitch_rate": GLITCH_RATE,
        "glitch_log10_abs_x": list(GLITCH_LOG10_X),
        "stationary": still,
        "shift": moved,
        "drop_per_record": {str(d): {"nats": v[0], "sd": v[1]} for d, v in drops.items()},
    }
    mark = {True: " (default)", False: ""}
    glitches = {0.0: "none", GLITCH_RATE: f"{GLITCH_RATE:.1%}"}
    rows_still = [
        [
            r["setting"] + mark[r["setting"] == default.name],
            r["batches"],
            glitches[r["glitch_rate"]],
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
            glitches[r["glitch_rate"]],
            f"{drops[r['shift_sd']][0]:.3g} ({drops[r['shift_sd']][1]:.2g} sd)",
            "-" if r["median_records"] is None else f"{r['median_records']:,.0f}",
            "-" if r["p90_records"] is None else f"{r['p90_records']:,.0f}",
            "-" if r["worst_records"] is None else f"{r['worst_records']:,}",
            r["missed_within_cap"],
            r["false_alarms_before_shift"],
        ]
        for r in sorted(
            moved,
            key=lambda r: (
                r["shift_sd"],
                r["glitch_rate"],
                r["clip_quantile"] is None,
                r["warmup_blocks"],
                r["threshold"],
            ),
        )
    ]
    md = (
        "# Drift alarms (simulated)\n\n"
        "`stream_app.drift.DriftDetector` (Page-Hinkley, mode down, alpha 1, on block "
        f"means of {DEFAULT_BLOCK_RECORDS} records standardised by a warm-up, refined while "
        "in control, every record's log p(x) clipped into the warm-up's range [Q(q) - m (Q(0.5) "
        "- Q(q)), Q(1 - q) + m (Q(1 - q) - Q(0.5))], Q its records' quantiles, "
        f"q = {DEFAULT_CLIP_QUANTILE:g}, m = {DEFAULT_CLIP_MARGIN:g}) fed the "
        "per-record log p(x) of each batch of records sampled from the tutorial's 2-component "
        f"1-D mixture (weights {WEIGHTS.tolist()}, locations {LOCS.tolist()}, scale {SCALE}) "
        "and scored exactly by it. h: threshold in standard deviations of a block mean. "
        f"Glitches: {GLITCH_RATE:.1%} of the records replaced by points with |x| log-uniform "
        f"in [1e{GLITCH_LOG10_X[0]:g}, 1e{GLITCH_LOG10_X[1]:g}] (log p(x) down to about "
        f"{float(log_px(np.array([10.0 ** GLITCH_LOG10_X[1]]))[0]):.0e}). "
        f"{seconds:,.0f} s on {os.cpu_count()} CPUs.\n\n"
        + comparison(
            still,
            moved,
            [
                (
                    f"clipped (q {DEFAULT_CLIP_QUANTILE:g}, m {DEFAULT_CLIP_MARGIN:g})",
                    default,
                ),
                ("unclipped (raw log p(x))", UNCLIPPED),
                (
                    f"clipped at the quantiles (q {QUANTILES.clip_quantile:g}, m 0)",
                    QUANTILES,
                ),
            ],
        )
        + "\n## False alarms on stationary streams\n\n"
        + markdown_table(
            [
                "setting",
                "batches",
                "glitches",
                "batches in all",
                "records",
                "false alarms",
                "per 10k batches",
            ],
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
                "glitches",
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
