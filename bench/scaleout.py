"""Scale-out: drain throughput of 1 and of 2 workers in one group over 4 partitions.

Both runs in one benchmark run against the same broker. This machine has 2 CPUs shared by the
broker and the workers, so the ratio says little about a real cluster: it is reported, not gated.
Writes bench/results/scaleout.{md,json}.

    python -m bench.scaleout [--records N]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile

from bench._common import machine, markdown_table, write_results
from bench.stream import drain_with_workers

PARTITIONS = 4


def run(n_workers: int, n: int, log_dir: pathlib.Path) -> float:
    rate = drain_with_workers(n_workers, n, log_dir, PARTITIONS, stem="scale")
    print(f"{n_workers} worker(s): {rate:,.0f} records/s", file=sys.stderr)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args(argv)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    # Rounds interleave 1 and 2 workers, so a slow spell of the shared machine hits both.
    rounds = [{k: run(k, args.records, log_dir) for k in (1, 2)} for _ in range(args.rounds)]
    rates = {k: statistics.median(r[k] for r in rounds) for k in (1, 2)}
    speedups = [r[2] / r[1] for r in rounds]
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "records": args.records,
        "rounds": rounds,
        "records_per_second": rates,  # medians over rounds
        "speedup_2_vs_1": statistics.median(speedups),
        "speedup_range": [min(speedups), max(speedups)],
    }
    md = (
        "# Scale-out over partitions\n\n"
        f"{args.records:,} preloaded records, {PARTITIONS} partitions, one consumer group; drain "
        f"rate from output append times; medians of {args.rounds} interleaved rounds, range in "
        f"brackets. {payload['machine']['cpus']} CPUs shared by the broker and the workers: "
        "reported, not a target.\n\n"
        + markdown_table(
            ["workers", "records/s", "range", "vs 1 worker"],
            [
                [
                    k,
                    v,
                    f"{min(r[k] for r in rounds):,.0f}-{max(r[k] for r in rounds):,.0f}",
                    v / rates[1],
                ]
                for k, v in rates.items()
            ],
        )
        + f"\n2 vs 1 worker per round: {', '.join(f'{x:.2f}x' for x in speedups)}.\n"
    )
    write_results("scaleout", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
