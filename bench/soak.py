"""Soak: one worker at half of its peak load for 10 minutes; its memory, sampled throughout.

Load comes from a separate `gmm-produce` process at a fixed rate; the worker's resident set size
(RSS, from /proc) is sampled every 5 s. Warm-up is the first 60 s. Reported: peak RSS, RSS at the
end of warm-up and at the end, growth after warm-up (mean of the last minute over the first
minute after warm-up), and whether the worker kept up (every record classified by the end).
Targets: RSS under 600 MB, growth under 5%. Writes bench/results/soak.{md,json,png}.

    python -m bench.soak [--seconds 600] [--rate R]   (R defaults to half of a measured peak)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench._common import RESULTS, machine, markdown_table, write_results
from bench.stream import BOOTSTRAP, create_topics, drain_with_workers
from support.harness import (
    SEED_MODEL,
    Topics,
    Worker,
    count_records,
    publish_model,
    wait_for,
)

WARMUP_S = 60.0
SAMPLE_S = 5.0


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def peak_rate(log_dir: pathlib.Path, n: int = 30_000) -> float:
    return drain_with_workers(1, n, log_dir, stem="soakpeak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-soak-"))
    peak = peak_rate(log_dir) if not args.rate else None
    rate = args.rate or peak / 2
    print(
        f"soak: {rate:,.0f} records/s for {args.seconds:.0f} s (peak {peak or 0:,.0f})",
        file=sys.stderr,
    )

    topics = Topics("soak")
    create_topics(topics)
    publish_model(BOOTSTRAP, topics.params, SEED_MODEL)
    worker = Worker(BOOTSTRAP, topics, log_dir, GMM_LOG_LEVEL="warn").start()
    worker.wait_ready()
    total = int(rate * args.seconds)
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "producer.cli",
            "--topic",
            topics.input,
            "--count",
            str(total),
            "--rate",
            str(rate),
        ],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    try:
        while load.poll() is None:
            samples.append((time.monotonic() - t0, rss_mb(worker.proc.pid)))
            time.sleep(SAMPLE_S)
        wait_for(
            lambda: count_records(BOOTSTRAP, topics.output) >= total,
            120,
            interval=1,
            message="the worker catching up",
        )
        samples.append((time.monotonic() - t0, rss_mb(worker.proc.pid)))
        kept_up = count_records(BOOTSTRAP, topics.output) >= total
    finally:
        load.kill()
        worker.stop()

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    after = rss[t >= WARMUP_S]
    first_min = after[: int(60 / SAMPLE_S)]
    last_min = after[-int(60 / SAMPLE_S) :]
    growth = (last_min.mean() - first_min.mean()) / first_min.mean()
    payload = {
        "machine": machine(),
        "seconds": args.seconds,
        "rate_records_per_second": rate,
        "peak_records_per_second": peak,
        "records": total,
        "kept_up": kept_up,
        "rss_mb_peak": float(rss.max()),
        "rss_mb_after_warmup": float(first_min.mean()),
        "rss_mb_end": float(last_min.mean()),
        "growth_after_warmup": float(growth),
        "samples": [{"t": float(a), "rss_mb": float(b)} for a, b in samples],
    }
    md = (
        "# Soak: one worker at half of its peak load\n\n"
        f"{args.seconds:.0f} s at {rate:,.0f} records/s ({total:,} records; peak measured in the "
        f"same run: {peak or 0:,.0f}/s). RSS sampled every {SAMPLE_S:g} s; warm-up "
        f"{WARMUP_S:g} s. Targets: RSS < 600 MB, growth after warm-up < 5%.\n\n"
        + markdown_table(
            [
                "peak RSS (MB)",
                "RSS after warm-up (MB)",
                "RSS at the end (MB)",
                "growth after warm-up",
                "kept up",
            ],
            [
                [
                    float(rss.max()),
                    float(first_min.mean()),
                    float(last_min.mean()),
                    f"{growth:+.2%}",
                    "yes" if kept_up else "no",
                ]
            ],
        )
        + "\n![rss](soak.png)\n"
    )
    write_results("soak", payload, md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    ax.plot(t, rss)
    ax.axvline(WARMUP_S, color="0.6", ls="--", label="end of warm-up")
    ax.set(xlabel="seconds", ylabel="worker RSS (MB)", title=f"Soak at {rate:,.0f} records/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "soak.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
