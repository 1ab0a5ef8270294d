"""Scale-out: drain throughput of 1 and of 2 workers in one group over 4 partitions.

Both runs in one benchmark run against the same broker. This machine has 2 CPUs shared by the
broker and the workers, so the ratio says little about a real cluster: it is reported, not gated.
Writes bench/results/scaleout.{md,json}.

    python -m bench.scaleout [--records N]
"""

from __future__ import annotations

import argparse
import pathlib
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
    args = parser.parse_args(argv)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    rates = {k: run(k, args.records, log_dir) for k in (1, 2)}
    payload = {
        "machine": machine(),
        "partitions": PARTITIONS,
        "records": args.records,
        "records_per_second": rates,
        "speedup_2_vs_1": rates[2] / rates[1],
    }
    md = (
        "# Scale-out over partitions\n\n"
        f"{args.records:,} preloaded records, {PARTITIONS} partitions, one consumer group; drain "
        f"rate from output append times. {payload['machine']['cpus']} CPUs shared by the broker "
        "and the workers: reported, not a target.\n\n"
        + markdown_table(
            ["workers", "records/s", "vs 1 worker"],
            [[k, v, v / rates[1]] for k, v in rates.items()],
        )
    )
    write_results("scaleout", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
