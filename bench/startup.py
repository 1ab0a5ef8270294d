"""Start-up: how long a new process takes to import its code, and a new worker to serve.

Every figure is a new process, rounds interleaved (so that a slow spell of the shared machine
hits every entry alike); medians and worst rounds. Imports, each against `import jax` in the same
round (the floor every process that uses JAX pays):
  jax            python -c "import jax"
  worker         the modules `gmm-worker` imports before it starts (stream_app.main, app,
                 agents, worker)
  trainer        trainer.main (what `gmm-trainer run` imports)
  trainer CLI    trainer.cli (every `gmm-trainer` subcommand)
With a broker (`make kafka-up`; `--no-broker` skips it): a new `gmm-worker` process with a
model on its params topic, from the process's start to its /ready answering 200 (model
installed, classifier loaded from the JAX cache, which an untimed first worker warms,
partitions assigned).

    python -m bench.startup [--rounds N] [--no-broker] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench._common import machine, markdown_table, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]

IMPORTS = {
    "jax": "import jax",
    "worker": "import stream_app.main, stream_app.app, stream_app.agents, stream_app.worker",
    "trainer": "import trainer.main",
    "trainer CLI": "import trainer.cli",
}
BASELINE = "jax"


def import_seconds(code: str) -> float:
    """Wall seconds of a new interpreter that runs `code` (start-up and exit included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def worker_ready_seconds(bootstrap: str, log_dir: pathlib.Path) -> float:
    """A new gmm-worker, with a model already on its params topic, until /ready is 200."""
    from support.harness import SEED_MODEL, Topics, Worker, publish_model

    topics = Topics("startup")
    publish_model(bootstrap, topics.params, SEED_MODEL)
    worker = Worker(bootstrap, topics, log_dir)
    t0 = time.perf_counter()
    worker.start()
    try:
        worker.wait_ready(timeout=120)
        return time.perf_counter() - t0
    finally:
        worker.stop()


def measure(rounds: int, bootstrap: str | None) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    if bootstrap:
        times["worker to /ready"] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        log_dir = pathlib.Path(tmp)
        # Untimed: the file cache warm for every round, and the worker's programs in the JAX
        # cache (a missing broker fails here, before any round).
        import_seconds("import jax")
        if bootstrap:
            worker_ready_seconds(bootstrap, log_dir)
        for _ in range(rounds):
            for name, code in IMPORTS.items():
                times[name].append(import_seconds(code))
            if bootstrap:
                times["worker to /ready"].append(worker_ready_seconds(bootstrap, log_dir))
    return times


def report(times: dict[str, list[float]]) -> tuple[dict[str, Any], str]:
    base = times[BASELINE]
    rows, entries = [], {}
    for name, seconds in times.items():
        median, worst = statistics.median(seconds), max(seconds)
        ratio = [s / b for s, b in zip(seconds, base, strict=True)]
        entry = {"seconds": seconds, "median": median, "worst": worst}
        if name in IMPORTS:
            entry["vs_jax_median"] = statistics.median(ratio)
            entry["vs_jax_worst"] = max(ratio)
        entries[name] = entry
        rows.append(
            [
                name,
                median,
                worst,
                f"{entry['vs_jax_median']:.2f} ({entry['vs_jax_worst']:.2f})"
                if name in IMPORTS
                else "-",
            ]
        )
    payload = {"machine": machine(), "rounds": len(base), "results": entries}
    md = (
        "# Start-up\n\n"
        f"`python -m bench.startup` on {payload['machine']['cpus']} CPUs, "
        f"{len(base)} interleaved rounds; every figure a new process (interpreter start and exit "
        "included). Imports against `import jax` in the same round; the worker from its "
        "process's start to /ready (a model on its params topic, the JAX cache warm).\n\n"
        + markdown_table(
            ["entry", "median s", "worst s", "vs import jax: median (worst round)"], rows
        )
    )
    return payload, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--no-broker", action="store_true", help="imports only")
    parser.add_argument(
        "--out", type=pathlib.Path, help="results directory (default: bench/results)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    times = measure(args.rounds, None if args.no_broker else args.bootstrap)
    payload, md = report(times)
    if args.out is None:
        write_results("startup", payload, md)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "startup.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / "startup.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
